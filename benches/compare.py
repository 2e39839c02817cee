"""Throughput of sentence-transformers and ONNX Runtime on a JSONL corpus ({"text"} a line), measured the
way `recall-bench embed` measures: truncation at 256 word pieces, length-sorted batches, median of 3
passes after a warm-up, plus the median latency of one short query. ONNX Runtime runs its fp32 export, its
BERT graph optimizer, and its own dynamic int8 quantization of the optimized graph (per tensor, its
default, and per channel). Every variant's vectors, and recall's (--recall NAME=FILE, `recall embed`
output in corpus order), are compared with sentence-transformers' by cosine (min and mean).
Run through benches/compare.sh."""
import argparse, json, os, statistics, time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

QUERY = "how do I sort a list of dictionaries by a key"

def timed(fn, passes=3):
    """The median time of `passes` calls after a warm-up, and the last call's result."""
    fn()  # warm-up
    times = []
    for _ in range(passes):
        t = time.perf_counter(); result = fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), result

def query_ms(fn, n=50):
    fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter(); fn(); samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)

def report(name, passages, tokens, seconds, q, cos=None):
    quality = f"   cosine to s-t min {cos[0]:.4f} mean {cos[1]:.5f}" if cos else ""
    print(f"{name:<52} {passages / seconds:7.1f} passages/s {tokens / seconds:8.0f} tokens/s   query p50 {q:.2f} ms{quality}")

def cosines(vectors, reference):
    v = np.asarray(vectors, dtype=np.float64); r = np.asarray(reference, dtype=np.float64)
    c = (v * r).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(r, axis=1))
    return float(c.min()), float(c.mean())

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default=".cache/compare")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for sentence-transformers on a GPU")
    ap.add_argument("--recall", action="append", default=[], help="NAME=FILE: recall embed output to compare")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    texts = [json.loads(l)["text"] for l in open(a.corpus) if l.strip()]
    st = SentenceTransformer(a.model, device=a.device)
    st.max_seq_length = 256
    tok = st.tokenizer
    enc = [tok(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    tokens = sum(len(e) for e in enc)
    order = sorted(range(len(texts)), key=lambda i: -len(enc[i]))
    sorted_texts = [texts[i] for i in order]
    print(f"{len(texts)} passages, {tokens} tokens, {a.threads} threads, batches of {a.batch}, {a.device}")

    s, reference = timed(lambda: st.encode(sorted_texts, batch_size=a.batch, normalize_embeddings=True))
    report(f"sentence-transformers (PyTorch {a.device})", len(texts), tokens, s, query_ms(lambda: st.encode([QUERY])))
    for spec in a.recall:
        name, path = spec.split("=", 1)
        got = [json.loads(l)["embedding"] for l in open(path) if l.strip()]
        assert len(got) == len(texts), f"{path}: {len(got)} vectors for {len(texts)} passages"
        lo, mean = cosines([got[i] for i in order], reference)
        print(f"{'recall ' + name:<52} cosine to s-t min {lo:.4f} mean {mean:.5f}")
    if a.device != "cpu":
        return  # ONNX Runtime is measured on the CPU only

    import onnxruntime as ort
    os.makedirs(a.work, exist_ok=True)
    plain = os.path.join(a.work, "model.onnx")
    if not os.path.exists(plain):
        class Encoder(torch.nn.Module):
            # Keyword arguments only: BertModel.forward's positional order changes between releases.
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        model = Encoder(st[0].auto_model.eval())
        dummy = tok(["a b c"], return_tensors="pt")
        torch.onnx.export(model, (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]), plain,
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "b", 1: "s"} for k in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
                          opset_version=17, dynamo=False)
    optimized = os.path.join(a.work, "model-opt.onnx")
    if not os.path.exists(optimized):
        from onnxruntime.transformers import optimizer
        optimizer.optimize_model(plain, model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(optimized)

    def run_ort(path, name):
        so = ort.SessionOptions(); so.intra_op_num_threads = a.threads; so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        def embed(batch_texts):
            b = tok(batch_texts, truncation=True, max_length=256, padding=True, return_tensors="np")
            feed = {k: b[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
            h = sess.run(None, feed)[0]
            m = feed["attention_mask"][..., None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
        def corpus():
            return np.concatenate([embed(sorted_texts[i:i + a.batch]) for i in range(0, len(sorted_texts), a.batch)])
        seconds, vectors = timed(corpus)
        report(name, len(texts), tokens, seconds, query_ms(lambda: embed([QUERY])), cosines(vectors, reference))

    run_ort(plain, "ONNX Runtime fp32, plain export")
    run_ort(optimized, "ONNX Runtime fp32, BERT graph optimizer")
    # Its own dynamic quantization (int8 weights, activations quantized at run time, u8 x s8 products on
    # VNNI) of the optimized graph, as ONNX Runtime's documentation recommends for transformers.
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    for per_channel in (False, True):
        path = os.path.join(a.work, f"model-opt-int8{'-per-channel' if per_channel else ''}.onnx")
        if not os.path.exists(path):
            # The optimizer's fused nodes carry no inferred types; their outputs are float.
            quantize_dynamic(optimized, path, weight_type=QuantType.QInt8, per_channel=per_channel,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        run_ort(path, f"ONNX Runtime int8 dynamic, {'per channel' if per_channel else 'per tensor'}")
    # ONNX Runtime's CPU provider has no bf16 matrix multiply on x86 (its bf16 fast math is an ARM64
    # option), so there is no bf16 row for it.

if __name__ == "__main__":
    main()
