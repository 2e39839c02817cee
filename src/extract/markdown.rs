//! The heading tree of Markdown (CommonMark, through pulldown-cmark, which parses in linear time): each
//! heading opens a section that runs to the next heading of any level, under the path of the headings
//! above it. The text itself is kept as written.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::truncate;
use crate::domain::{CharIndex, SectionSpan, MAX_HEADING_BYTES, MAX_HEADING_DEPTH};

/// The sections of `text` in order (character offsets); text before the first heading is in none.
pub fn sections(text: &str) -> Vec<SectionSpan> {
    // (level, byte start, heading text) of every heading, in order.
    let mut headings: Vec<(usize, usize, String)> = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (event, range) in Parser::new_ext(text, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => open = Some((depth(level), range.start, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, heading)) = open.as_mut() {
                    if heading.len() < MAX_HEADING_BYTES {
                        heading.push_str(&t);
                    }
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some((_, _, heading)) = open.as_mut() {
                    heading.push(' ');
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, start, heading)) = open.take() {
                    let heading = truncate(heading.trim(), MAX_HEADING_BYTES);
                    headings.push((level, start, heading));
                }
            }
            _ => {}
        }
    }
    let mut bounds: Vec<usize> = headings.iter().map(|h| h.1).collect();
    bounds.push(text.len());
    let mut chars = CharIndex::new(text);
    let at: Vec<usize> = bounds.iter().map(|&b| chars.at(b)).collect();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::with_capacity(headings.len());
    for (i, (level, _, heading)) in headings.into_iter().enumerate() {
        while path.last().is_some_and(|(l, _)| *l >= level) {
            path.pop();
        }
        path.push((
            level,
            if heading.is_empty() {
                "(untitled)".into()
            } else {
                heading
            },
        ));
        out.push(SectionSpan {
            path: path.iter().map(|(_, h)| h.clone()).take(MAX_HEADING_DEPTH).collect(),
            start: at[i],
            end: at[i + 1],
        });
    }
    out
}

fn depth(level: HeadingLevel) -> usize {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_make_a_tree_of_sections() {
        let text = "intro\n\n# Runbook\n\nsteps\n\n## Rollback `now`\n\nundo é\n\nSetext\n------\n\nx\n\n# Other\n";
        let s = sections(text);
        let paths: Vec<Vec<&str>> = s.iter().map(|s| s.path.iter().map(String::as_str).collect()).collect();
        assert_eq!(
            paths,
            vec![
                vec!["Runbook"],
                vec!["Runbook", "Rollback now"],
                vec!["Runbook", "Setext"],
                vec!["Other"],
            ]
        );
        let chars: Vec<char> = text.chars().collect();
        let heading_at = |i: usize| chars[s[i].start..].iter().collect::<String>();
        assert!(heading_at(0).starts_with("# Runbook"));
        assert!(heading_at(1).starts_with("## Rollback"));
        assert!(heading_at(2).starts_with("Setext"));
        assert_eq!(s[3].end, chars.len());
        assert!(s.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn a_hash_in_code_is_not_a_heading() {
        assert!(sections("```\n# not a heading\n```\n").is_empty());
        assert!(sections("plain text").is_empty());
    }
}
