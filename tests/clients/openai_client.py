"""Drives recall's /v1/embeddings with the official OpenAI Python SDK.

    openai_client.py BASE_URL TOKEN REFERENCE_JSONL

Exits 0 when every check holds; an AssertionError names the one that did not.
"""
import json
import math
import sys

import openai
from openai import OpenAI

base, token, reference = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
rows = [json.loads(line) for line in open(reference) if line.strip()]
texts = [r["text"] for r in rows]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


models = [m.id for m in client.models.list().data]
assert len(models) == 1, models
model = models[0]

lowest = {}
for encoding in (None, "float", "base64"):
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    response = client.embeddings.create(model=model, input=texts, **kwargs)
    assert [d.index for d in response.data] == list(range(len(texts)))
    vectors = [d.embedding for d in response.data]
    if encoding == "base64":
        # Asked for explicitly, the SDK hands the string over as it came: decode it as OpenAI documents.
        import array, base64
        vectors = [array.array("f", base64.b64decode(v)).tolist() for v in vectors]
    assert all(len(v) == 384 for v in vectors)
    lowest[encoding or "default"] = min(cosine(v, r["embedding"]) for v, r in zip(vectors, rows))
    assert lowest[encoding or "default"] >= 0.9999, lowest
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0, response.usage

single = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0])
assert len(single.data) == 1 and cosine(single.data[0].embedding, rows[0]["embedding"]) >= 0.9999

# An over-long text is truncated at the model's 256 word pieces (special tokens included), not refused.
long = client.embeddings.create(model=model, input=" ".join(["memory"] * 5000))
assert long.usage.prompt_tokens == 256, long.usage
assert len(long.data[0].embedding) == 384

for kwargs, error in [
    ({"model": "text-embedding-3-small", "input": "x"}, openai.NotFoundError),
    ({"model": model, "input": []}, openai.BadRequestError),
    ({"model": model, "input": ""}, openai.BadRequestError),
    ({"model": model, "input": "x", "dimensions": 64}, openai.BadRequestError),
    ({"model": model, "input": ["x"] * 257}, openai.BadRequestError),
]:
    try:
        client.embeddings.create(**kwargs)
    except error as e:
        assert e.body and e.body.get("message"), e.body
    else:
        raise AssertionError(f"{kwargs} was accepted")

try:
    OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).embeddings.create(model=model, input="x")
except openai.AuthenticationError:
    pass
else:
    raise AssertionError("a wrong token was accepted")

print(json.dumps({"model": model, "lowest_cosine": lowest}))
