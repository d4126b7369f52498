//! What the output guard removes from text: the secret values a call read
//! (and their encodings), and the [`RedactionRule`] patterns.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use regex::Regex;

use crate::secrets::Secret;

/// What a redaction removed, named in its marker (`[REDACTED:jwt]`) and in
/// the audit event `output_redacted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RedactionRule {
    /// A value of a credential the tool read during this call (through
    /// `CallerCredentials` or `DownstreamTokens`), as is, URL-encoded
    /// (`%XX`, any mix, `+` for a space), JSON-escaped (`\"`, `\uXXXX`,
    /// `\/`) or base64 (standard or URL-safe, alone or inside a longer
    /// base64 text such as `Basic` credentials). Values shorter than
    /// [`MIN_SECRET_BYTES`] are not searched for.
    SecretValue,
    /// A PEM private key block (`-----BEGIN ... PRIVATE KEY-----` to its
    /// end, or to the end of the text when cut).
    PrivateKey,
    /// A JSON Web Token (`eyJ...`.`eyJ...`.`...`).
    Jwt,
    /// A cloud or SaaS access key with a recognisable shape: AWS access key
    /// ids and `aws_secret_access_key = ...`, GitHub, GitLab, Slack, Google
    /// API, Stripe live, npm, Anthropic and OpenAI project keys.
    CloudKey,
    /// The credential of an `Authorization` header (`Bearer`, `Basic`,
    /// `DPoP`, `Token`) or of an API-key header, as a header line or a
    /// JSON/YAML member; the scheme stays.
    Authorization,
    /// The password of a URL's user information
    /// (`postgres://user:PASSWORD@host`); the rest of the URL stays.
    UrlCredentials,
    /// An e-mail address (PII; only with [`OutputPolicy::pii`]).
    Email,
    /// A payment card number: 13 to 19 digits, spaces or dashes between,
    /// passing the Luhn check (PII; only with [`OutputPolicy::pii`]).
    PaymentCard,
}

impl RedactionRule {
    /// Every rule, in the order they are applied.
    pub const ALL: [RedactionRule; 8] = [
        RedactionRule::SecretValue,
        RedactionRule::PrivateKey,
        RedactionRule::Jwt,
        RedactionRule::CloudKey,
        RedactionRule::Authorization,
        RedactionRule::UrlCredentials,
        RedactionRule::Email,
        RedactionRule::PaymentCard,
    ];

    /// The rule's name: `secret_value`, `private_key`, `jwt`, `cloud_key`,
    /// `authorization`, `url_credentials`, `email`, `payment_card`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedactionRule::SecretValue => "secret_value",
            RedactionRule::PrivateKey => "private_key",
            RedactionRule::Jwt => "jwt",
            RedactionRule::CloudKey => "cloud_key",
            RedactionRule::Authorization => "authorization",
            RedactionRule::UrlCredentials => "url_credentials",
            RedactionRule::Email => "email",
            RedactionRule::PaymentCard => "payment_card",
        }
    }

    /// What replaces a removed value: `[REDACTED:<rule>]`.
    pub fn marker(self) -> &'static str {
        match self {
            RedactionRule::SecretValue => "[REDACTED:secret_value]",
            RedactionRule::PrivateKey => "[REDACTED:private_key]",
            RedactionRule::Jwt => "[REDACTED:jwt]",
            RedactionRule::CloudKey => "[REDACTED:cloud_key]",
            RedactionRule::Authorization => "[REDACTED:authorization]",
            RedactionRule::UrlCredentials => "[REDACTED:url_credentials]",
            RedactionRule::Email => "[REDACTED:email]",
            RedactionRule::PaymentCard => "[REDACTED:payment_card]",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the rule is a PII detector (off by default).
    fn is_pii(self) -> bool {
        matches!(self, RedactionRule::Email | RedactionRule::PaymentCard)
    }
}

impl std::fmt::Display for RedactionRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest credential value searched for in results, in bytes: a
/// shorter one would match ordinary words (document such values as not
/// protected by the output guard).
pub const MIN_SECRET_BYTES: usize = 4;

/// What the [`OutputGuard`](super::OutputGuard) removes from a tool's
/// result.
///
/// By default: every value of every credential the call read (all fields),
/// and every high-confidence pattern ([`RedactionRule`] but the PII ones).
///
/// ```
/// use rmcp_guard::integrity::{OutputPolicy, RedactionRule};
///
/// // `username` is shown to the model (an account name, not a secret);
/// // e-mail addresses and card numbers are removed too.
/// let policy = OutputPolicy::default().public_field("username").pii(true);
/// assert!(policy.applies(RedactionRule::Email));
/// assert!(policy.applies(RedactionRule::Jwt));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct OutputPolicy {
    public_fields: BTreeSet<String>,
    pii: bool,
    skipped: BTreeSet<RedactionRule>,
}

impl OutputPolicy {
    /// A credential field whose value is not secret (an account name): it
    /// may appear in results. Defaults to none: every field's value is
    /// removed.
    pub fn public_field(mut self, field: impl Into<String>) -> Self {
        self.public_fields.insert(field.into());
        self
    }

    /// Whether the PII detectors ([`RedactionRule::Email`],
    /// [`RedactionRule::PaymentCard`]) apply. Defaults to `false`.
    pub fn pii(mut self, on: bool) -> Self {
        self.pii = on;
        self
    }

    /// Options that let secrets through: for a tool whose job is to return
    /// something a rule removes (a tool that mints tokens).
    pub fn dangerous(self) -> DangerousOutputPolicy {
        DangerousOutputPolicy { policy: self }
    }

    /// Whether `rule` applies.
    pub fn applies(&self, rule: RedactionRule) -> bool {
        !self.skipped.contains(&rule) && (self.pii || !rule.is_pii())
    }

    /// Whether `field`'s values are left in results.
    pub(crate) fn is_public(&self, field: &str) -> bool {
        self.public_fields.contains(field)
    }
}

/// Options of [`OutputPolicy`] that let secrets through; from
/// [`OutputPolicy::dangerous`].
#[derive(Debug, Clone)]
#[must_use]
pub struct DangerousOutputPolicy {
    policy: OutputPolicy,
}

impl DangerousOutputPolicy {
    /// Do not apply `rule`: what it would remove leaves the server.
    /// Defaults to every rule applied.
    pub fn skip(mut self, rule: RedactionRule) -> Self {
        self.policy.skipped.insert(rule);
        self
    }

    /// The policy.
    pub fn build(self) -> OutputPolicy {
        self.policy
    }
}

/// One pattern of a rule: the regex, the capture group holding what is
/// removed (0: the whole match), and the shortest text it can match.
struct Pattern {
    rule: RedactionRule,
    regex: Regex,
    group: usize,
    min_len: usize,
    /// A further check of the removed text (Luhn).
    check: Option<fn(&str) -> bool>,
}

/// The patterns, compiled once.
static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    // (rule, pattern, group removed, shortest match, further check)
    type Row = (RedactionRule, &'static str, usize, usize, Option<fn(&str) -> bool>);
    let table: [Row; 10] = [
        (
            RedactionRule::PrivateKey,
            r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|\z)",
            0,
            32,
            None,
        ),
        (
            RedactionRule::Jwt,
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
            0,
            27,
            None,
        ),
        (
            RedactionRule::CloudKey,
            r"(?-u:\b)(?:(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,}|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[A-Za-z0-9_-]{35}|(?:sk|rk)_live_[A-Za-z0-9]{16,}|sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36})(?-u:\b)",
            0,
            15,
            None,
        ),
        (
            RedactionRule::CloudKey,
            r#"(?i:aws_?secret_?access_?key)["']?\s*[:=]\s*["']?([A-Za-z0-9/+]{40})(?-u:\b)"#,
            1,
            60,
            None,
        ),
        (
            RedactionRule::Authorization,
            r#"(?i:authorization|proxy-authorization)["']?\s*[:=]\s*["']?(?i:bearer|basic|dpop|token|negotiate)\s+([A-Za-z0-9._~+/=-]{8,})"#,
            1,
            26,
            None,
        ),
        (
            RedactionRule::Authorization,
            r#"(?i:x-api-key|api-key|x-auth-token|private-token)["']?\s*[:=]\s*["']?([A-Za-z0-9._~+/=-]{16,})"#,
            1,
            24,
            None,
        ),
        (
            RedactionRule::UrlCredentials,
            r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/@"'<>]{0,128}:([^\s@/"'<>]{1,256})@"#,
            1,
            7,
            None,
        ),
        (
            RedactionRule::Email,
            r"(?-u:\b)[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?-u:\b)",
            0,
            6,
            None,
        ),
        (
            RedactionRule::PaymentCard,
            r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
            0,
            13,
            Some(luhn),
        ),
        // The unaligned PEM body of a key whose header was cut off is not
        // recognisable; a whole `PRIVATE KEY` header is.
        (
            RedactionRule::PrivateKey,
            r"(?-u:\b)PuTTY-User-Key-File-[0-9]+:(?s:.*?)(?:Private-MAC: [0-9a-f]+|\z)",
            0,
            24,
            None,
        ),
    ];
    table
        .into_iter()
        .map(|(rule, pattern, group, min_len, check)| Pattern {
            rule,
            // The patterns are constants, compiled by the unit tests.
            regex: Regex::new(pattern).unwrap_or_else(|e| panic!("redaction pattern {rule}: {e}")),
            group,
            min_len,
            check,
        })
        .collect()
});

/// The Luhn check of a card number's digits (13 to 19 of them).
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// What one result's redaction removed, by rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts([usize; RedactionRule::ALL.len()]);

impl Counts {
    /// Each rule that removed something, and how much.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RedactionRule, usize)> + '_ {
        RedactionRule::ALL.into_iter().zip(self.0).filter(|&(_, n)| n > 0)
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.0.iter().sum()
    }
}

/// The redaction of one call's result: the values it read, and the
/// patterns of the policy.
pub(crate) struct Redactor<'p> {
    policy: &'p OutputPolicy,
    /// The values and their encodings, when the call read any.
    values: Option<Values>,
    pub(crate) counts: Counts,
}

impl<'p> Redactor<'p> {
    /// The redaction of a result after the call read `secrets`.
    pub(crate) fn new(policy: &'p OutputPolicy, secrets: &[Secret]) -> Self {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        if policy.applies(RedactionRule::SecretValue) {
            for secret in secrets {
                for (field, value) in secret.fields() {
                    if value.len() >= MIN_SECRET_BYTES && !policy.is_public(field) {
                        encodings(value, &mut needles);
                    }
                }
            }
        }
        Redactor {
            policy,
            values: Values::new(needles),
            counts: Counts::default(),
        }
    }

    /// Remove what the policy removes from `text`; whether anything was.
    pub(crate) fn redact(&mut self, text: &mut String) -> bool {
        let mut found: Vec<(Range<usize>, RedactionRule)> = Vec::new();
        if let Some(values) = &self.values
            && text.len() >= values.shortest
        {
            let raw = text.as_bytes();
            let mut ranges = Vec::new();
            values.find(raw, &mut ranges);
            // The same text with its percent escapes decoded (any mix of
            // escaped and literal characters, either hex case), and with
            // its JSON string escapes decoded (`\"`, `\/`, `\uXXXX` in
            // either case, surrogate pairs: any JSON library's output).
            for decoded in [Decoded::percent(raw), Decoded::json(raw)].into_iter().flatten() {
                let mut inner = Vec::new();
                values.find(&decoded.bytes, &mut inner);
                ranges.extend(inner.into_iter().map(|r| decoded.original(r)));
            }
            found.extend(ranges.into_iter().map(|r| (r, RedactionRule::SecretValue)));
        }
        for pattern in PATTERNS.iter() {
            if text.len() < pattern.min_len || !self.policy.applies(pattern.rule) {
                continue;
            }
            if pattern.group == 0 && pattern.check.is_none() {
                found.extend(pattern.regex.find_iter(text).map(|m| (m.range(), pattern.rule)));
                continue;
            }
            for caps in pattern.regex.captures_iter(text) {
                if let Some(m) = caps.get(pattern.group)
                    && pattern.check.is_none_or(|check| check(m.as_str()))
                {
                    found.push((m.range(), pattern.rule));
                }
            }
        }
        if found.is_empty() {
            return false;
        }
        self.replace(text, found);
        true
    }

    /// Replace the ranges found (overlapping ones merged, named for the
    /// first rule) by their markers.
    fn replace(&mut self, text: &mut String, mut found: Vec<(Range<usize>, RedactionRule)>) {
        found.sort_by_key(|(range, rule)| (range.start, *rule));
        let mut merged: Vec<(Range<usize>, RedactionRule)> = Vec::with_capacity(found.len());
        for (range, rule) in found {
            match merged.last_mut() {
                Some((last, _)) if range.start < last.end => last.end = last.end.max(range.end),
                _ => merged.push((range, rule)),
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (mut range, rule) in merged {
            // A range from a percent-decoded view may end inside a
            // character: widen it to whole characters.
            while !text.is_char_boundary(range.start) {
                range.start -= 1;
            }
            while !text.is_char_boundary(range.end) {
                range.end += 1;
            }
            if range.start < at {
                range.start = at;
            }
            out.push_str(&text[at..range.start]);
            out.push_str(rule.marker());
            self.counts.0[rule.index()] += 1;
            at = range.end.max(at);
        }
        out.push_str(&text[at..]);
        zeroize::Zeroize::zeroize(text);
        *text = out;
    }

    /// Remove the values from decoded bytes (a blob); whether any was.
    pub(crate) fn redact_bytes(&mut self, bytes: &mut Vec<u8>) -> bool {
        let Some(values) = &self.values else {
            return false;
        };
        let mut found = Vec::new();
        values.find(bytes, &mut found);
        found.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
        for range in found {
            match merged.last_mut() {
                Some(last) if range.start < last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        let found = merged;
        if found.is_empty() {
            return false;
        }
        let marker = RedactionRule::SecretValue.marker().as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for range in found {
            out.extend_from_slice(&bytes[at..range.start]);
            out.extend_from_slice(marker);
            at = range.end;
            self.counts.0[RedactionRule::SecretValue.index()] += 1;
        }
        out.extend_from_slice(&bytes[at..]);
        zeroize::Zeroize::zeroize(bytes);
        *bytes = out;
        true
    }
}

/// `value` and the forms it takes in results: as serde writes it in a
/// JSON string (searched in a text whose JSON escapes are decoded, it finds
/// a value escaped twice), with `+` for its spaces (form encoding), and in
/// base64 (both alphabets, at each of the three alignments inside a longer
/// encoded text, where at least 8 characters are the value's alone).
/// Percent and JSON escapes are matched by decoding the text instead.
fn encodings(value: &str, needles: &mut Vec<Vec<u8>>) {
    needles.push(value.as_bytes().to_vec());
    if let Ok(mut json) = serde_json::to_string(value) {
        if json.len() != value.len() + 2 {
            needles.push(json.as_bytes()[1..json.len() - 1].to_vec());
        }
        zeroize::Zeroize::zeroize(&mut json);
    }
    if value.contains(' ') {
        needles.push(value.replace(' ', "+").into_bytes());
    }
    let bytes = value.as_bytes();
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3usize {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            // The characters whose 6 bits all come from the value.
            let first = (8 * shift).div_ceil(6);
            let end = (8 * (shift + bytes.len())) / 6;
            if end > first && end - first >= 8 {
                needles.push(encoded.as_bytes()[first..end].to_vec());
            }
            zeroize::Zeroize::zeroize(&mut shifted);
        }
    }
}

/// A haystack up to this long is searched needle by needle (`memmem`);
/// a longer one with one automaton, built at the first such text.
const SMALL_TEXT: usize = 4096;

/// The values a call read, in the forms searched for (zeroized on drop).
struct Values {
    needles: Vec<Vec<u8>>,
    shortest: usize,
    automaton: std::sync::OnceLock<Option<AhoCorasick>>,
}

impl Values {
    fn new(mut needles: Vec<Vec<u8>>) -> Option<Values> {
        needles.sort_unstable();
        needles.dedup();
        let shortest = needles.iter().map(Vec::len).min()?;
        Some(Values {
            needles,
            shortest,
            automaton: std::sync::OnceLock::new(),
        })
    }

    /// Every place a value is in `haystack` (ranges may overlap).
    fn find(&self, haystack: &[u8], found: &mut Vec<Range<usize>>) {
        if haystack.len() < self.shortest {
            return;
        }
        if haystack.len() > SMALL_TEXT {
            let automaton = self.automaton.get_or_init(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    // Quick to build for a few short needles, fast to scan.
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(&self.needles)
                    .map_err(|e| tracing::warn!(error = %e, "output guard: searching needle by needle"))
                    .ok()
            });
            if let Some(automaton) = automaton {
                found.extend(automaton.find_iter(haystack).map(|m| m.range()));
                return;
            }
        }
        for needle in &self.needles {
            found.extend(memchr::memmem::find_iter(haystack, needle).map(|at| at..at + needle.len()));
        }
    }
}

impl Drop for Values {
    fn drop(&mut self) {
        for needle in &mut self.needles {
            zeroize::Zeroize::zeroize(needle);
        }
    }
}

/// A text with its escapes decoded, and where each escape came from.
struct Decoded {
    bytes: Vec<u8>,
    escapes: Vec<Escape>,
}

/// One decoded escape: its bytes in the decoded text, in the original.
struct Escape {
    decoded: Range<usize>,
    original: Range<usize>,
}

impl Decoded {
    /// The decoding of `raw` so far: its first `at` bytes, which hold no
    /// escape.
    fn up_to(raw: &[u8], at: usize) -> Decoded {
        let mut bytes = Vec::with_capacity(raw.len());
        bytes.extend_from_slice(&raw[..at]);
        Decoded {
            bytes,
            escapes: Vec::new(),
        }
    }

    /// `%XX` decoded; `None` when there is none.
    fn percent(raw: &[u8]) -> Option<Decoded> {
        let hex = |b: u8| (b as char).to_digit(16);
        let at = memchr::memchr_iter(b'%', raw)
            .find(|&i| i + 2 < raw.len() && hex(raw[i + 1]).is_some() && hex(raw[i + 2]).is_some())?;
        let mut decoded = Decoded::up_to(raw, at);
        let mut i = at;
        while i < raw.len() {
            if raw[i] == b'%'
                && i + 2 < raw.len()
                && let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2]))
            {
                decoded.push(&[(h * 16 + l) as u8], i..i + 3);
                i += 3;
            } else {
                decoded.bytes.push(raw[i]);
                i += 1;
            }
        }
        Some(decoded)
    }

    /// JSON string escapes decoded (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`,
    /// `\r`, `\t`, `\uXXXX` and surrogate pairs); `None` when there is none.
    fn json(raw: &[u8]) -> Option<Decoded> {
        let at = memchr::memchr(b'\\', raw)?;
        let mut decoded = Decoded::up_to(raw, at);
        let mut i = at;
        while i < raw.len() {
            if raw[i] == b'\\'
                && let Some((c, len)) = json_escape(&raw[i..])
            {
                let mut utf8 = [0u8; 4];
                decoded.push(c.encode_utf8(&mut utf8).as_bytes(), i..i + len);
                i += len;
            } else {
                decoded.bytes.push(raw[i]);
                i += 1;
            }
        }
        (!decoded.escapes.is_empty()).then_some(decoded)
    }

    fn push(&mut self, bytes: &[u8], original: Range<usize>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.escapes.push(Escape {
            decoded: start..self.bytes.len(),
            original,
        });
    }

    /// Where a range of the decoded text came from in the original (a
    /// range starting or ending inside an escape takes all of it).
    fn original(&self, range: Range<usize>) -> Range<usize> {
        // Between escapes, offsets move by what the escapes before saved.
        let map = |d: usize, end: bool| -> usize {
            let i = self.escapes.partition_point(|e| e.decoded.start <= d);
            match i.checked_sub(1).map(|i| &self.escapes[i]) {
                None => d,
                Some(e) if d < e.decoded.end => {
                    if end {
                        e.original.end
                    } else {
                        e.original.start
                    }
                }
                Some(e) => e.original.end + (d - e.decoded.end),
            }
        };
        let start = map(range.start, false);
        let end = if range.end > range.start {
            map(range.end - 1, true).max(map(range.end - 1, false) + 1)
        } else {
            start
        };
        start..end
    }
}

/// The character a JSON escape at the start of `text` stands for, and its
/// length; `None` when `text` does not start with a valid one.
fn json_escape(text: &[u8]) -> Option<(char, usize)> {
    let simple = match text.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let unit = |t: &[u8]| -> Option<u32> {
                let hex = t.get(2..6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
            };
            let high = unit(text)?;
            if (0xD800..0xDC00).contains(&high) {
                // A surrogate pair: `\uD83D\uDE00`.
                if text.get(6) != Some(&b'\\') || text.get(7) != Some(&b'u') {
                    return None;
                }
                let low = unit(&text[6..])?;
                if !(0xDC00..0xE000).contains(&low) {
                    return None;
                }
                let c = char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?;
                return Some((c, 12));
            }
            return char::from_u32(high).map(|c| (c, 6));
        }
        _ => return None,
    };
    Some((simple, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(policy: &OutputPolicy, secrets: &[Secret], text: &str) -> (String, Counts) {
        let mut redactor = Redactor::new(policy, secrets);
        let mut text = text.to_owned();
        redactor.redact(&mut text);
        (text, redactor.counts)
    }

    #[test]
    fn patterns_compile_and_defaults_are_pinned() {
        assert_eq!(PATTERNS.len(), 10);
        let policy = OutputPolicy::default();
        for rule in RedactionRule::ALL {
            assert_eq!(policy.applies(rule), !rule.is_pii(), "{rule}");
            assert_eq!(rule.marker(), format!("[REDACTED:{rule}]"));
        }
        assert!(!policy.is_public("username"));
        assert_eq!(MIN_SECRET_BYTES, 4);
        let skipped = OutputPolicy::default().dangerous().skip(RedactionRule::Jwt).build();
        assert!(!skipped.applies(RedactionRule::Jwt));
    }

    #[test]
    fn a_value_read_is_removed_in_every_encoding() {
        let password = "p@ss w/rd\"é:1234";
        let secret = Secret::new([("username", "svc-acme"), ("password", password)]);
        let policy = OutputPolicy::default().public_field("username");
        let b64 = base64::engine::general_purpose::STANDARD.encode(password);
        let url = password.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let json = serde_json::to_string(password).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc-acme:{password}"));
        for text in [
            format!("connecting with {password} as svc-acme"),
            format!("dsn=postgres://svc-acme:{url}@db:5432/app"),
            "mixed p%40ss%20w%2frd\"%C3%A9:1234 end".to_owned(),
            format!("{{\"password\":{json}}}"),
            format!("blob {b64} end"),
            format!("Authorization: Basic {basic}"),
            "form p%40ss+w%2Frd%22%c3%a9%3A1234".to_owned(),
        ] {
            let (out, counts) = redacted(&policy, std::slice::from_ref(&secret), &text);
            assert!(!out.contains(password), "{out}");
            assert!(!out.contains(&b64[..b64.len() - 4]), "{out}");
            assert!(!out.to_ascii_uppercase().contains(&url[3..url.len() - 3]), "{out}");
            assert!(counts.total() >= 1, "{text} -> {out}");
            assert!(out.contains("[REDACTED:"), "{out}");
        }
        let (out, _) = redacted(&policy, &[secret], "connected as svc-acme");
        assert_eq!(out, "connected as svc-acme", "a public field stays");
    }

    #[test]
    fn json_escapes_of_any_library_and_long_texts_are_searched() {
        let password = "Kx9 \"vélo\"/@Zq-4417";
        let secret = Secret::new([("password", password)]);
        let padding = "lorem ipsum dolor sit amet ".repeat(400); // past SMALL_TEXT: the automaton
        for text in [
            r#"{"password":"Kx9 \"v\u00e9lo\"\/@Zq-4417"}"#.to_owned(),
            r#"{"password":"Kx9 \"v\u00E9lo\"/@Zq-4417"}"#.to_owned(),
            r#"{"password":"Kx9 \u0022v\u00E9lo\u0022/@Zq-4417"}"#.to_owned(),
            r#""{\"password\":\"Kx9 \\\"vélo\\\"/@Zq-4417\"}""#.to_owned(),
            format!("{padding}{password}{padding}"),
            format!("{padding}{}{padding}", r#"Kx9 \"v\u00e9lo\"\/@Zq-4417"#),
        ] {
            let (out, counts) = redacted(&OutputPolicy::default(), std::slice::from_ref(&secret), &text);
            assert!(
                out.contains("[REDACTED:secret_value]"),
                "{}",
                &out[..out.len().min(200)]
            );
            assert!(!out.contains("Zq-4417"), "{}", &out[..out.len().min(200)]);
            assert_eq!(counts.total(), 1);
        }
        // Escapes elsewhere stay as they were.
        let text = r#"{"note":"say \"hi\" \u00e9 \ud83d\ude00","password":"Kx9 \"v\u00e9lo\"\/@Zq-4417"}"#;
        let (out, _) = redacted(&OutputPolicy::default(), &[secret], text);
        assert_eq!(
            out,
            r#"{"note":"say \"hi\" \u00e9 \ud83d\ude00","password":"[REDACTED:secret_value]"}"#
        );
    }

    #[test]
    fn short_values_and_unrelated_text_are_left_alone() {
        let secret = Secret::new([("pin", "123"), ("password", "correct horse")]);
        let (out, counts) = redacted(
            &OutputPolicy::default(),
            &[secret],
            "123 apples; 100% sure; a%zz; https://example.com/a?b=c",
        );
        assert_eq!(out, "123 apples; 100% sure; a%zz; https://example.com/a?b=c");
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn high_confidence_patterns_are_removed() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.c2lnbmF0dXJlLWJ5dGVz";
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let cases = [
            (format!("token={jwt};"), RedactionRule::Jwt, jwt.to_owned()),
            (
                format!("key:\n{pem}\ndone"),
                RedactionRule::PrivateKey,
                "MIIEowIBAAKCAQEA".to_owned(),
            ),
            (
                "cut -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA".to_owned(),
                RedactionRule::PrivateKey,
                "b3BlbnNzaC1rZXktdjEAAAAA".to_owned(),
            ),
            (
                "id AKIAIOSFODNN7EXAMPLE x".to_owned(),
                RedactionRule::CloudKey,
                "AKIAIOSFODNN7EXAMPLE".to_owned(),
            ),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
                RedactionRule::CloudKey,
                "wJalrXUtnFEMI".to_owned(),
            ),
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ012345 ok".to_owned(),
                RedactionRule::CloudKey,
                "ghp_0123".to_owned(),
            ),
            (
                "curl -H 'Authorization: Bearer abc.def-ghi_jkl' https://x".to_owned(),
                RedactionRule::Authorization,
                "abc.def-ghi_jkl".to_owned(),
            ),
            (
                r#"{"headers":{"authorization":"DPoP Zm9vYmFyYmF6cXV4"}}"#.to_owned(),
                RedactionRule::Authorization,
                "Zm9vYmFyYmF6cXV4".to_owned(),
            ),
            (
                "dsn: postgres://app:s3cr3t!x@db.internal:5432/app".to_owned(),
                RedactionRule::UrlCredentials,
                "s3cr3t!x".to_owned(),
            ),
        ];
        for (text, rule, secret) in cases {
            let (out, counts) = redacted(&OutputPolicy::default(), &[], &text);
            assert!(!out.contains(&secret), "{rule}: {out}");
            assert!(out.contains(rule.marker()), "{rule}: {out}");
            assert_eq!(counts.iter().collect::<Vec<_>>(), [(rule, 1)], "{text}");
        }
        let (out, _) = redacted(&OutputPolicy::default(), &[], "Authorization: Bearer abcdefghijkl");
        assert_eq!(
            out, "Authorization: Bearer [REDACTED:authorization]",
            "the scheme stays"
        );
        let (out, _) = redacted(&OutputPolicy::default(), &[], "https://user:pw@host/x");
        assert_eq!(out, "https://user:[REDACTED:url_credentials]@host/x");
    }

    #[test]
    fn pii_only_when_asked_and_cards_must_pass_luhn() {
        let text = "mail bob@example.org, card 4111 1111 1111 1111, order 4111 1111 1111 1112";
        let (out, counts) = redacted(&OutputPolicy::default(), &[], text);
        assert_eq!(out, text);
        assert_eq!(counts.total(), 0);
        let (out, counts) = redacted(&OutputPolicy::default().pii(true), &[], text);
        assert_eq!(
            out,
            "mail [REDACTED:email], card [REDACTED:payment_card], order 4111 1111 1111 1112"
        );
        assert_eq!(counts.total(), 2);
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "Listed 3 repositories: rmcp-guard, network-automation (2 open issues). \
                    See https://github.com/org/repo and mail me at 10:30; version 1.2.3-beta; \
                    {\"id\": 12345678901234, \"sha\": \"0123456789abcdef0123456789abcdef01234567\"}";
        let (out, counts) = redacted(&OutputPolicy::default(), &[], text);
        assert_eq!(out, text);
        assert_eq!(counts.total(), 0);
    }
}
