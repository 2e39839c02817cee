//! Criterion benches of the embedder: a length-sorted batch of 32 real passages, and one short query.
//! `cargo bench --bench embed`; `recall-bench embed --corpus FILE` measures a whole corpus.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use recall::embed::{Embedder, EmbedderOptions, ModelSource};

fn passages() -> Vec<String> {
    include_str!("../tests/fixtures/minilm-reference.jsonl")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn embed(c: &mut Criterion) {
    let embedder =
        Embedder::load(&ModelSource::parse(None), EmbedderOptions::default()).expect("the model (run scripts/setup)");
    let texts = passages();
    let inputs: Vec<Vec<u32>> = texts
        .iter()
        .take(32)
        .map(|t| embedder.truncated_input(t).unwrap())
        .collect();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("embed");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("32 passages (tokens/s)", |b| {
        b.iter(|| embedder.embed_inputs(&inputs).unwrap())
    });
    group.finish();
    c.bench_function("one short query", |b| {
        b.iter(|| embedder.encode(&["how do I sort a list by a key"]).unwrap())
    });
}

criterion_group!(benches, embed);
criterion_main!(benches);
