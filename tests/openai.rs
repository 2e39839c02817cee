//! `/v1/embeddings` and `/v1/models` driven by the official OpenAI Python SDK (pinned in tests/clients):
//! the reference texts' vectors at cosine >= 0.9999 to sentence-transformers' in every encoding, a
//! batch, truncation of an over-long text, refusals the SDK raises as its own errors, the token.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_sdk_gets_the_reference_embeddings() {
    let (_pool, options) = common::fresh_database().await;
    let (mut child, base) =
        common::spawn_serve_with(&common::url_of(&options), Some("embed-token"), &["--no-projector"]);
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-reference.jsonl");
    let summary = tokio::task::spawn_blocking(move || {
        common::wait_ready(&base);
        common::run_client("openai_client.py", &[&base, "embed-token", reference])
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let summary = summary.unwrap();
    for encoding in ["default", "float", "base64"] {
        assert!(
            summary["lowest_cosine"][encoding].as_f64().unwrap() >= 0.9999,
            "{summary}"
        );
    }
}
