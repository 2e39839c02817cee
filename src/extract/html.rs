//! A web page's main content: dom_smoothie (a port of Mozilla's Readability) drops navigation, headers,
//! footers and scripts and renders what is left as Markdown, whose heading tree gives the sections.

use dom_smoothie::{Config, Readability, ReadabilityError, TextMode};

use super::{markdown, ExtractError, Extracted, Format};
use crate::domain::Limits;

/// Elements parsed at most; a real page has tens of thousands at most.
pub const MAX_ELEMENTS: usize = 500_000;

pub fn extract(bytes: &[u8], _limits: &Limits) -> Result<Extracted, ExtractError> {
    // Pages in a legacy encoding keep their ASCII; the rest becomes U+FFFD rather than a refusal.
    let html = String::from_utf8_lossy(super::without_bom(bytes));
    let config = Config {
        max_elements_to_parse: MAX_ELEMENTS,
        text_mode: TextMode::Markdown,
        ..Config::default()
    };
    // Readability turns every h1 into an h2, which would make a page's sections siblings of its title
    // rather than its children: each heading moves one level down first (h5 and h6 share the last),
    // so the tree keeps its shape.
    let document = dom_query::Document::from(html.as_ref());
    for level in (1..=5).rev() {
        document.select(&format!("h{level}")).rename(&format!("h{}", level + 1));
    }
    let article = Readability::with_document(document, None, Some(config))
        .and_then(|mut r| r.parse())
        .map_err(|e| match e {
            ReadabilityError::TooManyElements(_, limit) => ExtractError::TooComplex {
                format: "HTML".into(),
                what: "elements".into(),
                limit: limit as u64,
            },
            ReadabilityError::GrabFailed => ExtractError::NoContent,
            other => ExtractError::Corrupt {
                format: "HTML".into(),
                detail: other.to_string(),
            },
        })?;
    let text = article.text_content.trim().to_owned();
    if text.is_empty() {
        return Err(ExtractError::NoContent);
    }
    let sections = markdown::sections(&text);
    let title = Some(article.title.trim().to_owned()).filter(|t| !t.is_empty());
    Ok(Extracted {
        format: Format::Html,
        title,
        text,
        pages: Vec::new(),
        sections,
    })
}
