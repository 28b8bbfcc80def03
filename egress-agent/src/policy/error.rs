//! Positioned diagnostics of policy loading.

use std::fmt;
use std::path::PathBuf;

/// 1-based position in a policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One error or warning about a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
}

impl Diagnostic {
    /// Renders as `file:line:col: <kind>: message`, the form editors jump to.
    pub fn render(&self, kind: &str) -> String {
        format!("{}: {kind}: {}", self.place(), self.message)
    }

    /// `file:line:col`, or the file alone when the position is unknown.
    pub fn place(&self) -> String {
        match self.location {
            Some(l) => format!("{}:{}:{}", self.file.display(), l.line, l.column),
            None => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place(), self.message)
    }
}

/// Why a set of policies could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no policy files (*.yaml, *.yml) found", .0.display())]
    Empty(PathBuf),
    /// Every problem found, in file order.
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

impl LoadError {
    /// The positioned problems, empty for I/O errors.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Turns a serde_yaml error into a message without the trailing position (that goes into the
/// diagnostic's location) and with a "did you mean" for misspelt keys and values.
pub(crate) fn from_yaml(file: &std::path::Path, err: &serde_yaml::Error) -> Diagnostic {
    let location = err.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    let mut message = err.to_string();
    if let Some(l) = location {
        let suffix = format!(" at line {} column {}", l.line, l.column);
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    Diagnostic {
        file: file.to_path_buf(),
        location,
        message: with_suggestion(&message),
    }
}

/// Adds "did you mean `x`?" to serde's unknown field/variant messages.
pub(crate) fn with_suggestion(message: &str) -> String {
    let Some(rest) = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|head| message.split_once(head).map(|(_, rest)| rest))
    else {
        return message.to_string();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates = tail.split('`').skip(1).step_by(2);
    match closest(unknown, candidates) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message.to_string(),
    }
}

/// The candidate nearest to `word`, if near enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let word_norm = norm(word);
    candidates
        .map(|c| (levenshtein(&word_norm, &norm(c)), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_keys() {
        let m = with_suggestion(
            "unknown field `defaultActon`, expected one of `mode`, `defaultAction`",
        );
        assert!(m.ends_with("did you mean `defaultAction`?"), "{m}");
        let m =
            with_suggestion("unknown field `default_action`, expected `defaultAction` or `log`");
        assert!(m.ends_with("did you mean `defaultAction`?"), "{m}");
        let m = with_suggestion("unknown field `zzzzzz`, expected `mode` or `log`");
        assert!(!m.contains("did you mean"), "{m}");
    }
}
