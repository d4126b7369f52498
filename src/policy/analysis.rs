//! Which parts of `input` a policy can read, to key memoized decisions.
//!
//! A decision may be reused for another request only when the policy cannot
//! tell the two requests apart. The scan below is deliberately syntactic and
//! conservative: outside strings and comments, every occurrence of the
//! identifier `input` must be followed directly by `.field`. Anything else
//! (`input[...]`, `input` passed whole to a function, `import input`,
//! `with input as ...`) means "the policy may read everything", and then
//! nothing is memoized. A policy that names `input.arguments` (the engine
//! checks the returned fields), or calls a builtin whose result changes
//! between calls (time, randomness, HTTP), is never memoized either. When
//! the scan succeeds the engine also hands the policy only the fields it
//! reads, which saves converting the rest. Data documents are fixed for a loaded policy
//! version, and the memo is discarded with it.
//!
//! Being wrong in the conservative direction costs speed; being wrong in the
//! other direction would reuse a decision the policy would not make, so the
//! scan accepts nothing it does not understand.

use std::collections::BTreeSet;

use super::input::FIELDS;

/// Builtin prefixes whose results can differ between two identical calls.
const NONDETERMINISTIC: [&str; 6] = ["time.", "rand.", "uuid.", "http.", "opa.", "net.lookup"];

/// What the scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputUse {
    /// Decisions depend only on these input fields (in [`FIELDS`] order);
    /// memoizable unless `arguments` is among them.
    Fields(Vec<&'static str>),
    /// Do not memoize; the reason is for the logs.
    Opaque(&'static str),
}

/// Scan every module of a policy.
pub(crate) fn scan<'a>(modules: impl IntoIterator<Item = &'a str>) -> InputUse {
    let mut fields = BTreeSet::new();
    for source in modules {
        if let Err(reason) = scan_module(source, &mut fields) {
            return InputUse::Opaque(reason);
        }
    }
    // Unknown field names are undefined for every request: not part of the key.
    InputUse::Fields(FIELDS.iter().copied().filter(|f| fields.contains(*f)).collect())
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn scan_module(src: &str, fields: &mut BTreeSet<String>) -> Result<(), &'static str> {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            // Template strings (`$"...{input.x}..."`, OPA 1.x) read input
            // inside a string: not understood here, so opaque.
            b'$' if matches!(b.get(i + 1), Some(b'"' | b'`')) => {
                return Err("policy uses a template string");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = &src[start..i];
                // A dotted path: `time.now_ns`, `x.input` (not the input).
                let after_dot = start > 0 && b[start - 1] == b'.';
                if !after_dot && word != "input" && i < b.len() && b[i] == b'.' {
                    let mut j = i + 1;
                    while j < b.len() && is_ident(b[j]) {
                        j += 1;
                    }
                    let path = &src[start..j];
                    if NONDETERMINISTIC.iter().any(|p| path.starts_with(p)) {
                        return Err("policy calls a builtin that is not deterministic");
                    }
                }
                if word == "input" && !after_dot {
                    if i < b.len() && b[i] == b'.' && i + 1 < b.len() && is_ident_start(b[i + 1]) {
                        let f = i + 1;
                        let mut j = f;
                        while j < b.len() && is_ident(b[j]) {
                            j += 1;
                        }
                        fields.insert(src[f..j].to_owned());
                        i = j;
                    } else {
                        return Err("policy reads input other than as input.<field>");
                    }
                }
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_access_is_memoizable_on_those_fields() {
        let p = "package x\nallow if { input.groups[_] == \"admin\"; input.action == \"tools/call\" }";
        assert_eq!(scan([p]), InputUse::Fields(vec!["groups", "action"]));
    }

    #[test]
    fn arguments_are_reported() {
        let p = "package x\nallow if input.arguments.x == 1";
        assert_eq!(scan([p]), InputUse::Fields(vec!["arguments"]));
    }

    #[test]
    fn whole_input_is_opaque() {
        for p in [
            "package x\nallow if f(input)",
            "package x\nallow if input[\"arguments\"]",
            "package x\nimport input\nallow if true",
            "package x\nallow if { y := input; y.a }",
            "package x\nallow if input .a",
            "package x\nallow if $\"{input.arguments}\" == \"x\"",
        ] {
            assert!(matches!(scan([p]), InputUse::Opaque(_)), "{p}");
        }
    }

    #[test]
    fn strings_comments_and_other_identifiers_are_ignored() {
        let p = "package x\n# uses input[0] in a comment\nmy_input := 1\ninput_x := \"input\"\nallow if data.input.y == `input`";
        assert_eq!(scan([p]), InputUse::Fields(vec![]));
    }

    #[test]
    fn nondeterministic_builtins_are_opaque() {
        let p = "package x\nallow if time.now_ns() > 0";
        assert!(matches!(scan([p]), InputUse::Opaque(_)));
        let p = "package x\nallow if http.send({})";
        assert!(matches!(scan([p]), InputUse::Opaque(_)));
    }
}
