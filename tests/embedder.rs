//! The embedder against sentence-transformers' own outputs for all-MiniLM-L6-v2 (the real model, from
//! models/ via scripts/setup), padding invariance, and chunking properties with the real tokenizer.

mod common;

use std::sync::OnceLock;

use common::cosine;

use proptest::prelude::*;
use recall::embed::{Chunker, EmbedError, Embedder, EmbedderOptions, EncoderKind, ModelFiles, ModelSource, Precision};

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        Embedder::load(
            &ModelSource::parse(None),
            EmbedderOptions {
                max_batch_tokens: 4096,
                ..Default::default()
            },
        )
        .expect("the model under models/ (run scripts/setup)")
    })
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let raw = include_str!("fixtures/minilm-reference.jsonl");
    raw.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn batched_embeddings_match_sentence_transformers() {
    let refs = references();
    assert_eq!(refs.len(), 64);
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let vectors = embedder().encode(&texts).unwrap();
    for (i, (v, r)) in vectors.iter().zip(&refs).enumerate() {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i} is not normalised: {norm}");
        let c = cosine(v, &r.embedding);
        assert!(c >= 0.9999, "text {i} ({} tokens): cosine {c}", r.n_tokens);
    }
}

#[test]
fn single_text_embeddings_match_sentence_transformers() {
    for (i, r) in references().iter().enumerate() {
        let v = embedder().encode(&[r.text.as_str()]).unwrap().remove(0);
        let c = cosine(&v, &r.embedding);
        assert!(c >= 0.9999, "text {i}: cosine {c}");
    }
}

/// The quantized precisions against sentence-transformers' f32 vectors: every reference text (1 to 256
/// word pieces) at cosine >= 0.99, batched and alone, on whatever kernels this CPU selects. The same
/// embedder serves every precision (a query at its generation's): the weights are packed on first use.
#[test]
fn bf16_and_int8_embeddings_stay_close_to_sentence_transformers() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    for precision in [Precision::Bf16, Precision::Int8] {
        let batched = embedder().encode_at(&texts, precision).unwrap();
        let cosines: Vec<f32> = batched
            .iter()
            .zip(&refs)
            .map(|(v, r)| cosine(v, &r.embedding))
            .collect();
        let (min, mean) = (
            cosines.iter().copied().fold(1.0f32, f32::min),
            cosines.iter().sum::<f32>() / cosines.len() as f32,
        );
        eprintln!(
            "{precision}: cosine to sentence-transformers min {min:.5}, mean {mean:.5} ({} texts)",
            refs.len()
        );
        assert!(min >= 0.99, "{precision}: lowest cosine {min}");
        // Quantized, not the f32 vectors under another name.
        let f32_vectors = embedder().encode(&texts).unwrap();
        assert!(
            batched.iter().zip(&f32_vectors).all(|(q, f)| q != f),
            "{precision}: some vector equals its f32 one"
        );
        for (i, (v, r)) in batched.iter().zip(&refs).enumerate() {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-4,
                "{precision} text {i} is not normalised: {norm}"
            );
            // Alone (the few-rows path of a query) as in a batch: each row is quantized on its own.
            if i % 8 == 0 {
                let alone = embedder().encode_at(&[r.text.as_str()], precision).unwrap().remove(0);
                let c = cosine(&alone, v);
                assert!(c >= 0.99999, "{precision} text {i}: alone against batched, cosine {c}");
            }
        }
    }
}

#[test]
fn an_embedder_loaded_at_a_precision_names_it_and_uses_it() {
    let int8 = common::embedder_at(Precision::Int8);
    assert_eq!(int8.identity().precision, Precision::Int8);
    assert_eq!(int8.identity().name, embedder().identity().name);
    assert!(int8.identity().to_string().contains("int8"), "{}", int8.identity());
    let text = references().remove(3).text;
    let own = int8.encode(&[text.as_str()]).unwrap().remove(0);
    assert_eq!(
        own,
        embedder()
            .encode_at(&[text.as_str()], Precision::Int8)
            .unwrap()
            .remove(0)
    );
    assert_ne!(own, int8.encode_at(&[text.as_str()], Precision::F32).unwrap().remove(0));
    // The padded (GPU) encoder has f32 only, and says so.
    let Err(err) = Embedder::load(
        &ModelSource::parse(None),
        EmbedderOptions {
            precision: Precision::Int8,
            encoder: EncoderKind::Padded,
            ..Default::default()
        },
    ) else {
        panic!("the padded encoder accepted int8")
    };
    assert!(matches!(err, EmbedError::PrecisionNeedsPackedEncoder { .. }), "{err}");
    assert!(err.to_string().contains("--precision f32"), "{err}");
}

#[test]
fn tokenisation_reaches_256_word_pieces_not_the_files_128() {
    let e = embedder();
    for r in references() {
        assert_eq!(e.truncated_input(&r.text).unwrap().len(), r.n_tokens.min(256));
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_beside_longer_texts() {
    let refs = references();
    let short = "A short query about sorting lists";
    let alone = embedder().encode(&[short]).unwrap().remove(0);
    let mut batch: Vec<&str> = refs.iter().take(12).map(|r| r.text.as_str()).collect();
    batch.insert(5, short);
    let together = embedder().encode(&batch).unwrap().remove(5);
    let c = cosine(&alone, &together);
    assert!(c >= 0.99999, "cosine {c}");
}

#[test]
fn results_come_back_in_input_order_whatever_the_batching() {
    let refs = references();
    let texts: Vec<&str> = refs.iter().take(20).map(|r| r.text.as_str()).collect();
    let tiny = Embedder::load(
        &ModelSource::parse(None),
        EmbedderOptions {
            max_batch_tokens: 300,
            ..Default::default()
        },
    )
    .unwrap();
    for (v, r) in tiny.encode(&texts).unwrap().iter().zip(&refs) {
        assert!(cosine(v, &r.embedding) >= 0.9999);
    }
}

#[test]
fn the_identity_names_model_revision_and_dimension() {
    let id = embedder().identity();
    assert_eq!(id.name, "sentence-transformers/all-MiniLM-L6-v2");
    assert!(id.revision.starts_with("sha256:"));
    assert_eq!(id.dimension, 384);
}

#[test]
fn a_broken_model_folder_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = ModelFiles::resolve(&ModelSource::Local(dir.path().to_path_buf())).unwrap_err();
    assert!(
        matches!(&err, EmbedError::MissingFile { path, .. } if path.ends_with("config.json")),
        "{err}"
    );
    let model = ModelSource::parse(None);
    let ModelSource::Local(real) = model else {
        panic!("models/ has the model")
    };
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(real.join(f), dir.path().join(f)).unwrap();
    }
    let err = ModelFiles::resolve(&ModelSource::Local(dir.path().to_path_buf())).unwrap_err();
    assert!(err.to_string().contains("1_Pooling/config.json"), "{err}");
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    let err = ModelFiles::resolve(&ModelSource::Local(dir.path().to_path_buf())).unwrap_err();
    assert!(err.to_string().contains("only mean pooling"), "{err}");
}

fn chunker(overlap: usize) -> Chunker {
    embedder().chunker(overlap, true)
}

#[test]
fn a_long_document_is_chunked_without_losing_a_token() {
    let text: String = references()
        .iter()
        .map(|r| r.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let chunks = chunker(32).chunk("Python docs", &text, &[]).unwrap();
    assert!(chunks.len() > 10);
    let title_tokens = chunks[0].input_ids.len() - chunks[0].text_tokens - 2;
    assert!(title_tokens >= 2, "the title is embedded with every chunk");
    let total: usize = chunks.iter().map(|c| c.text_tokens).sum();
    let whole = embedder().truncated_input(&text).unwrap();
    assert!(whole.len() == 256, "the whole text is far longer than one sequence");
    let distinct = total - 32 * (chunks.len() - 1);
    let tokenizer_count = embedder()
        .chunker(0, false)
        .chunk("", &text, &[])
        .unwrap()
        .iter()
        .map(|c| c.text_tokens)
        .sum::<usize>();
    assert_eq!(
        distinct, tokenizer_count,
        "every word piece is in exactly one chunk, apart from the overlaps"
    );
    for c in &chunks {
        assert!(c.input_ids.len() <= 256);
        assert_eq!(c.input_ids.len(), c.text_tokens + title_tokens + 2);
    }
    let vectors = embedder()
        .embed_inputs(&chunks.iter().map(|c| c.input_ids.clone()).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(vectors.len(), chunks.len());
}

#[test]
fn a_short_document_embeds_as_title_then_text() {
    let chunks = chunker(32)
        .chunk("Sorting", "Lists can be sorted in place.", &[])
        .unwrap();
    assert_eq!(chunks.len(), 1);
    let via_chunk = embedder()
        .embed_inputs(&[chunks[0].input_ids.clone()])
        .unwrap()
        .remove(0);
    let via_text = embedder()
        .encode(&["Sorting Lists can be sorted in place."])
        .unwrap()
        .remove(0);
    assert!(cosine(&via_chunk, &via_text) >= 0.99999);
}

fn check_chunks(text: &str, overlap: usize, max_tokens: usize) -> Result<(), TestCaseError> {
    let chunks = chunker(overlap).chunk("", text, &[]).unwrap();
    check_cover(text, &chunks, max_tokens)?;
    for pair in chunks.windows(2) {
        // The configured overlap, counted in word pieces at the window edge.
        let a = &pair[0].input_ids[1..pair[0].input_ids.len() - 1];
        let b = &pair[1].input_ids[1..pair[1].input_ids.len() - 1];
        prop_assert_eq!(&a[a.len() - overlap..], &b[..overlap]);
    }
    Ok(())
}

#[test]
fn unicode_text_is_chunked_with_exact_character_offsets() {
    let text = "東京は日本の首都です。".repeat(40) + &"naïve café 👩‍👩‍👧 e\u{301}\u{302} ".repeat(60) + "end";
    check_chunks(&text, 16, 256).unwrap();
}

#[test]
fn a_full_window_ends_at_a_heading_else_a_paragraph_else_a_sentence() {
    let paragraph = |n: usize, tag: &str| {
        (0..n)
            .map(|i| format!("Sentence {i} of {tag} says one short thing."))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Paragraphs of about 110 word pieces: a 254-piece window holds two, and ends between them.
    let text = ["alpha", "beta", "gamma", "delta"]
        .map(|t| paragraph(10, t))
        .join("\n\n");
    let chunks = chunker(16).chunk("", &text, &[]).unwrap();
    assert!(chunks.len() >= 2);
    for c in &chunks[..chunks.len() - 1] {
        assert!(
            c.text.ends_with("thing.\n\n"),
            "ends at a paragraph: {:?}",
            &c.text[c.text.len() - 30..]
        );
    }
    // One paragraph: the window ends after a sentence.
    let text = paragraph(60, "one");
    let chunks = chunker(16).chunk("", &text, &[]).unwrap();
    for c in &chunks[..chunks.len() - 1] {
        assert!(
            c.text.ends_with("thing. "),
            "ends at a sentence: {:?}",
            &c.text[c.text.len() - 30..]
        );
    }
    // A heading a third of the way in: the first chunk ends before it, the next starts at it, and the
    // overlap does not reach back across it.
    let intro = paragraph(5, "intro");
    let text = format!("{intro}\n\n## Rollback\n\n{}", paragraph(40, "rollback"));
    let heading = intro.chars().count() + 2;
    let chunks = chunker(16).chunk("", &text, &[heading]).unwrap();
    assert_eq!(chunks[0].char_end, heading);
    assert_eq!(chunks[1].char_start, heading);
    assert!(chunks[1].text.starts_with("## Rollback"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn chunks_cut_at_sections_still_cover_the_text(
        words in proptest::collection::vec("[a-z]{1,12}|[.!?]|\n\n|#", 1..1200),
        starts in proptest::collection::vec(0usize..6000, 0..20),
    ) {
        let text: String = words.iter().map(|w| format!("{w} ")).collect();
        let mut starts: Vec<usize> = starts.into_iter().filter(|&s| s < text.len()).collect();
        starts.sort_unstable();
        let chunks = chunker(32).chunk("", &text, &starts).unwrap();
        check_cover(&text, &chunks, 256)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn chunks_cover_the_text_in_order_within_the_limit(
        words in proptest::collection::vec("[a-z]{1,12}|[0-9]{1,6}|[\\u{4e00}-\\u{4e50}]{1,3}|[😀-😏]|e\\u{301}|[.,;!?]", 1..900),
        seps in proptest::collection::vec(" |\n|  |\t", 1..900),
        overlap in 0usize..64,
    ) {
        let text: String = words.iter().zip(seps.iter().cycle()).map(|(w, s)| format!("{w}{s}")).collect();
        check_chunks(&text, overlap, 256)?;
    }
}

/// Chunks cover the text in order with exact offsets, no gap between consecutive ones, each within the
/// word-piece and the character limits.
fn check_cover(text: &str, chunks: &[recall::embed::Chunk], max_tokens: usize) -> Result<(), TestCaseError> {
    let chars: Vec<char> = text.chars().collect();
    prop_assert!(!chunks.is_empty());
    prop_assert_eq!(chunks[0].char_start, 0);
    prop_assert_eq!(chunks.last().unwrap().char_end, chars.len());
    for pair in chunks.windows(2) {
        prop_assert!(pair[1].char_start > pair[0].char_start);
        prop_assert!(pair[1].char_start <= pair[0].char_end);
    }
    for c in chunks {
        prop_assert!(c.input_ids.len() <= max_tokens);
        prop_assert!(c.char_end - c.char_start <= recall::embed::MAX_CHUNK_CHARS);
        let slice: String = chars[c.char_start..c.char_end].iter().collect();
        prop_assert_eq!(&slice, &c.text);
    }
    Ok(())
}

/// Whatever the text, its chunks cover it within bounds (the overlap is not checked: a window cut by
/// characters may be shorter than it).
fn check_bounds(text: &str) -> Result<(), TestCaseError> {
    check_cover(text, &chunker(32).chunk("a title", text, &[]).unwrap(), 256)
}

#[test]
fn text_the_tokenizer_cannot_split_is_cut_by_characters() {
    // Numbers between control characters: the tokenizer drops the separators and makes one unknown word.
    let numbers: String = (0..20_000).map(|i| format!("{i}\u{1}")).collect();
    check_bounds(&numbers).unwrap();
    assert!(
        chunker(32).chunk("", &numbers, &[]).unwrap().len() >= numbers.chars().count() / recall::embed::MAX_CHUNK_CHARS
    );
    check_bounds(&"y".repeat(50_000)).unwrap();
    check_bounds(&format!("a{}b", " ".repeat(50_000))).unwrap();
    check_bounds(&"\u{1}\u{2}".repeat(9_000)).unwrap();
    check_bounds(&"ab ".repeat(20_000)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn any_text_is_chunked_within_bounds(
        pieces in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                (any::<char>(), 1usize..12_000).prop_map(|(c, n)| c.to_string().repeat(n)),
                proptest::collection::vec(proptest::char::range('\u{1}', '\u{1f}'), 1..200)
                    .prop_map(|v| v.into_iter().collect::<String>()),
            ],
            1..5,
        ),
    ) {
        check_bounds(&pieces.concat())?;
    }
}

#[test]
fn the_embed_command_streams_one_line_per_input_in_order() {
    use std::io::Write;
    let refs = references();
    let mut input = String::new();
    for (i, r) in refs.iter().take(6).enumerate() {
        if i % 2 == 0 {
            input.push_str(&serde_json::json!({"id": format!("r{i}"), "text": r.text}).to_string());
        } else {
            input.push_str(&r.text.replace('\n', " "));
        }
        input.push('\n');
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recall"))
        .args(["embed", "-", "--max-batch-tokens", "512"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, line) in lines.iter().enumerate() {
        let v: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
        assert_eq!(v.len(), 384);
        assert!(cosine(&v, &refs[i].embedding) >= 0.9999, "line {i}");
        assert_eq!(line.get("id").is_some(), i % 2 == 0);
    }

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recall"))
        .args(["embed", "--chunk", "--overlap", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let long = refs
        .iter()
        .take(10)
        .map(|r| r.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::json!({"id": 7, "title": "T", "text": long})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let chunks: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(chunks.len() > 2);
    assert_eq!(chunks[0]["char_start"], 0);
    assert_eq!(
        chunks.last().unwrap()["char_end"].as_u64().unwrap() as usize,
        long.chars().count()
    );
    assert!(chunks.iter().all(|c| c["id"] == 7));
}

#[test]
fn the_padded_reference_encoder_agrees_with_the_packed_one() {
    use recall::embed::EncoderKind;
    let padded = Embedder::load(
        &ModelSource::parse(None),
        EmbedderOptions {
            encoder: EncoderKind::Padded,
            max_batch_tokens: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let refs = references();
    let texts: Vec<&str> = refs.iter().take(24).map(|r| r.text.as_str()).collect();
    let a = padded.encode(&texts).unwrap();
    let b = embedder().encode(&texts).unwrap();
    for (i, ((a, b), r)) in a.iter().zip(&b).zip(&refs).enumerate() {
        assert!(cosine(a, &r.embedding) >= 0.9999, "padded, text {i}");
        assert!(cosine(a, b) >= 0.99999, "packed vs padded, text {i}");
    }
}
