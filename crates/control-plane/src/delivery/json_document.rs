//! Is a key or value one JSON document? The check every record's key and
//! value goes through before a sink embeds it as is (`record.rs`).
//!
//! It accepts what `serde_json` accepts as one document (RFC 8259: one value,
//! whitespace around it, UTF-8), except nesting deeper than [`MAX_DEPTH`],
//! which a consumer's parser could refuse once the record is wrapped around
//! it, and which is then carried as a string instead. It exists because `serde_json` was the
//! largest cost of the control plane's JSONL delivery (16% of its CPU at
//! 1 KiB): here a string's end is found with one SIMD search (`memchr2`) and
//! UTF-8 is checked once for the whole input (`simdutf8`), about 2.5 times
//! faster at 1 KiB. Tests and `fuzz/fuzz_targets/json_document.rs` compare it
//! with `serde_json`.

/// Containers nested deeper than this are not embedded: serde_json's `Value`
/// refuses more than 127 levels, and a webhook body puts three around a
/// record's value (body, `records`, record).
pub const MAX_DEPTH: usize = 100;

/// Where the document lies in the input (the whitespace around it left out)
/// and whether a line break occurs between its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document {
    pub start: usize,
    pub end: usize,
    /// A `\n` or `\r` between tokens: the only place one can be, since a
    /// string cannot hold a raw one.
    pub line_break: bool,
}

/// The document `bytes` holds, or `None` if it is not exactly one JSON value.
pub fn find(bytes: &[u8]) -> Option<Document> {
    if simdutf8::basic::from_utf8(bytes).is_err() {
        return None;
    }
    let mut s = Scanner {
        bytes,
        at: 0,
        line_break: false,
    };
    s.skip_whitespace();
    let start = s.at;
    s.value()?;
    let end = s.at;
    s.skip_whitespace();
    (s.at == bytes.len()).then_some(Document {
        start,
        end,
        line_break: s.line_break,
    })
}

/// What encloses the scanner's position, innermost last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    line_break: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.at += 1)
    }

    fn skip_whitespace(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' => {}
                b'\n' | b'\r' => self.line_break = true,
                _ => return,
            }
            self.at += 1;
        }
    }

    /// One value, iteratively: containers push onto a fixed stack instead of
    /// recursing, so a hostile value cannot exhaust the thread's stack.
    fn value(&mut self) -> Option<()> {
        let mut stack = [Container::Array; MAX_DEPTH];
        let mut depth = 0;
        loop {
            // At the start of a value.
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let (container, close) = if open == b'{' {
                        (Container::Object, b'}')
                    } else {
                        (Container::Array, b']')
                    };
                    stack[depth] = container;
                    depth += 1;
                    self.skip_whitespace();
                    if self.eat(close).is_none() {
                        self.member_start(container)?;
                        continue;
                    }
                    depth -= 1;
                }
                b'"' => self.string()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => self.number()?,
            }
            // After a value: close containers until one goes on.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.skip_whitespace();
                let container = stack[depth - 1];
                if self.eat(b',').is_some() {
                    self.skip_whitespace();
                    self.member_start(container)?;
                    break;
                }
                let close = match container {
                    Container::Object => b'}',
                    Container::Array => b']',
                };
                self.eat(close)?;
                depth -= 1;
            }
        }
    }

    /// Before a member's value: an object's `"key" :`, nothing for an array.
    fn member_start(&mut self, container: Container) -> Option<()> {
        if container == Container::Object {
            if self.peek()? != b'"' {
                return None;
            }
            self.string()?;
            self.skip_whitespace();
            self.eat(b':')?;
        }
        self.skip_whitespace();
        Some(())
    }

    /// A string, from its opening quote. The input is known to be UTF-8, so
    /// only quotes, backslashes and control characters need looking at.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            let rest = &self.bytes[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            // Folded, not `any`: no early exit lets the compiler vectorize it.
            if rest[..stop].iter().fold(false, |bad, &b| bad | (b < 0x20)) {
                return None;
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Some(());
            }
            self.escape()?;
        }
    }

    /// The rest of an escape, after its backslash.
    fn escape(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
            b'u' => {
                let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                self.at += 5;
            }
            _ => return None,
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.bytes[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    /// At least one digit.
    fn some_digits(&mut self) -> Option<()> {
        let from = self.at;
        self.digits();
        (self.at > from).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What serde_json says: the document's range, or `None`.
    fn serde(bytes: &[u8]) -> Option<(usize, usize)> {
        let raw = serde_json::from_slice::<&RawValue>(bytes).ok()?;
        let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
        Some((start, start + raw.get().len()))
    }

    fn same_as_serde(bytes: &[u8]) {
        let ours = find(bytes).map(|d| (d.start, d.end));
        assert_eq!(ours, serde(bytes), "{:?}", String::from_utf8_lossy(bytes));
    }

    #[test]
    fn agrees_with_serde_json_on_hand_picked_input() {
        let cases: &[&[u8]] = &[
            b"{\"a\":1}",
            b" \t{\"a\" : [1, 2.5e-3, -0, true, false, null, \"x\"]}\n",
            b"{\"a\":1} x",
            b"{\"a\":1}}",
            b"[1,2,]",
            b"[,]",
            b"{,}",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"[1 2]",
            b"{\"a\":1,}",
            b"{\"a\":01}",
            b"-",
            b"-01",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"1E-7",
            b"+1",
            b"nul",
            b"nulls",
            b"truex",
            b"\"a\x01b\"",
            b"\"\x7f\"",
            b"\"\xff\"",
            b"\"\xc3\xa9\"",
            b"[\"\xed\xa0\x80\"]",
            b"\"\\u12\"",
            b"\"\\u12g4\"",
            b"\"\\uD800\"",
            b"\"\\q\"",
            b"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
            b"\"unterminated",
            b"\"ends in a backslash\\",
            b"",
            b"   ",
            b"[]",
            b"{}",
            b"[[[]]]",
            b"[[[]]",
            b"[}",
            b"{]",
            b"\"\"",
            b"0",
            b"123456789012345678901234567890",
            b"{\"a\":{\"b\":[{\"c\":\"d\"}]},\"e\":[]}",
            b"\r\n[\r\n1\r\n]\r\n",
        ];
        for c in cases {
            same_as_serde(c);
        }
    }

    #[test]
    fn agrees_with_serde_json_on_every_mutation_of_a_document() {
        let doc =
            br#"{"ts_us":1700000000000000,"seq":42,"a":[1,-2.5e+3,true,null,"\u00e9\n"],"o":{}}"#;
        let alphabet = b"{}[]\",:\\-+.eE01 \n\tanu\x01\xc3";
        for i in 0..doc.len() {
            let mut cut = doc.to_vec();
            cut.remove(i);
            same_as_serde(&cut);
            for &b in alphabet {
                let mut changed = doc.to_vec();
                changed[i] = b;
                same_as_serde(&changed);
                let mut grown = doc.to_vec();
                grown.insert(i, b);
                same_as_serde(&grown);
            }
        }
    }

    #[test]
    fn reports_line_breaks_between_tokens() {
        assert!(find(b"{\"a\":\n1}").unwrap().line_break);
        assert!(find(b"[1,\r2]").unwrap().line_break);
        assert!(!find(b"{\"a\":\"\\n\"}").unwrap().line_break);
        let d = find(b"\n {\"a\":1} \n").unwrap();
        assert_eq!((d.start, d.end), (2, 9));
    }

    #[test]
    fn refuses_nesting_that_a_consumer_could_not_read_once_wrapped() {
        let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(find(nested(MAX_DEPTH).as_bytes()).is_some());
        assert!(find(nested(MAX_DEPTH + 1).as_bytes()).is_none());
        // The deepest embedded value, in a webhook body, still parses.
        let body = format!("{{\"records\":[{{\"value\":{}}}]}}", nested(MAX_DEPTH));
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }
}
