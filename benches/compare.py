"""Throughput of sentence-transformers and ONNX Runtime on a JSONL corpus ({"text"} a line), measured the
way `recall-bench embed` measures: truncation at 256 word pieces, length-sorted batches, median of 3
passes after a warm-up, plus the median latency of one short query. Run through benches/compare.sh."""
import argparse, json, os, statistics, time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

QUERY = "how do I sort a list of dictionaries by a key"

def timed(fn, passes=3):
    fn()  # warm-up
    times = []
    for _ in range(passes):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)

def query_ms(fn, n=50):
    fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter(); fn(); samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)

def report(name, passages, tokens, seconds, q):
    print(f"{name:<44} {passages / seconds:7.1f} passages/s {tokens / seconds:8.0f} tokens/s   query p50 {q:.2f} ms")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default=".cache/compare")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for sentence-transformers on a GPU")
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

    s = timed(lambda: st.encode(sorted_texts, batch_size=a.batch, normalize_embeddings=True))
    report(f"sentence-transformers (PyTorch {a.device})", len(texts), tokens, s, query_ms(lambda: st.encode([QUERY])))
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
            for i in range(0, len(sorted_texts), a.batch):
                embed(sorted_texts[i:i + a.batch])
        report(name, len(texts), tokens, timed(corpus), query_ms(lambda: embed([QUERY])))

    run_ort(plain, "ONNX Runtime fp32, plain export")
    run_ort(optimized, "ONNX Runtime fp32, BERT graph optimizer")

if __name__ == "__main__":
    main()
