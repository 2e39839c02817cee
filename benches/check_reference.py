"""Compares `recall embed` output with sentence-transformers' reference vectors, line by line:
    python3 benches/check_reference.py REFERENCE.jsonl OUTPUT.jsonl [MIN_COSINE]
Exits non-zero when any text falls under MIN_COSINE (default 0.9999) or a line is missing."""
import json, math, sys

def main():
    reference, output = sys.argv[1], sys.argv[2]
    bar = float(sys.argv[3]) if len(sys.argv) > 3 else 0.9999
    want = [json.loads(l) for l in open(reference) if l.strip()]
    got = [json.loads(l) for l in open(output) if l.strip()]
    if len(got) != len(want):
        sys.exit(f"{output}: {len(got)} vectors for {len(want)} reference texts")
    worst = (2.0, None)
    for w, g in zip(want, got):
        if g.get("id") != w.get("id"):
            sys.exit(f"{output}: id {g.get('id')!r} where {w.get('id')!r} was expected (output out of order)")
        a, b = w["embedding"], g["embedding"]
        if len(a) != len(b):
            sys.exit(f"{output}: id {w.get('id')!r} has {len(b)} dimensions, the reference {len(a)}")
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        cosine = sum(x * y for x, y in zip(a, b)) / norm
        worst = min(worst, (cosine, w.get("id")), key=lambda t: t[0])
    print(f"{output}: {len(got)} texts, lowest cosine {worst[0]:.7f} (id {worst[1]}), bar {bar}")
    if worst[0] < bar:
        sys.exit(1)

if __name__ == "__main__":
    main()
