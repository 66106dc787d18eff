//! deb822, the `Field: value` paragraphs of `control`, `Packages` and `Release` files.
//! Field names compare case-insensitively; a continuation line (leading space or tab)
//! belongs to the field above it; blank lines separate paragraphs.

/// One paragraph: its fields in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Paragraph {
    fields: Vec<(String, String)>,
    /// The line the paragraph starts on (1-based), for errors found later.
    pub line: usize,
}

/// Why a deb822 text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deb822Error {
    #[error("line {line}: a continuation line comes before any field")]
    Orphan { line: usize },
    #[error("line {line}: {text:?} is neither `Field: value` nor a continuation line")]
    NotAField { line: usize, text: String },
    #[error("line {line}: field {field} appears twice in one paragraph")]
    Duplicate { line: usize, field: String },
}

impl Paragraph {
    /// The value of a field: the first line trimmed, continuation lines each trimmed and
    /// joined with `\n`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Fields in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses every paragraph of `text`. Lines starting with `#` are comments.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, Deb822Error> {
    let mut out = Vec::new();
    let mut current = Paragraph::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            if !current.fields.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            let Some((_, value)) = current.fields.last_mut() else {
                return Err(Deb822Error::Orphan { line });
            };
            if !value.is_empty() {
                value.push('\n');
            }
            value.push_str(raw.trim());
            continue;
        }
        let Some((name, value)) = raw.split_once(':') else {
            return Err(Deb822Error::NotAField { line, text: raw.to_string() });
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Deb822Error::NotAField { line, text: raw.to_string() });
        }
        if current.get(name).is_some() {
            return Err(Deb822Error::Duplicate { line, field: name.to_string() });
        }
        if current.fields.is_empty() {
            current.line = line;
        }
        current.fields.push((name.to_string(), value.trim().to_string()));
    }
    if !current.fields.is_empty() {
        out.push(current);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text = "Package: a\nDescription: short\n long\n .\n more\n\n\n# note\nPACKAGE: b\nSHA256:\n 00 1 x\n 11 2 y\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("Description"), Some("short\nlong\n.\nmore"));
        assert_eq!(ps[1].get("Package"), Some("b"));
        assert_eq!(ps[1].get("sha256"), Some("00 1 x\n11 2 y"));
        assert_eq!(ps[1].line, 9);
        assert_eq!(ps[1].get("Version"), None);
    }

    #[test]
    fn malformed_text_names_its_line() {
        assert_eq!(parse(" orphan\n"), Err(Deb822Error::Orphan { line: 1 }));
        assert!(matches!(parse("A: 1\nno colon\n"), Err(Deb822Error::NotAField { line: 2, .. })));
        assert!(matches!(parse("A: 1\na: 2\n"), Err(Deb822Error::Duplicate { line: 2, .. })));
    }
}
