//! A small JSON value type with a parser and a serializer.
//!
//! The C ABI speaks JSON in both directions (requests from TypeScript, replies
//! and dumped state back). We write our own because the build hosts have no
//! crates.io. 64-bit values that may exceed 2^53 travel as decimal strings, so
//! `as_u64` accepts both numbers and strings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    /// Integers are kept exact; serialized as a string when above 2^53.
    U64(u64),
    I64(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(BTreeMap::new())
    }
    pub fn set(&mut self, k: &str, v: impl Into<Json>) -> &mut Self {
        if let Json::Obj(m) = self {
            m.insert(k.to_string(), v.into());
        }
        self
    }
    pub fn with(mut self, k: &str, v: impl Into<Json>) -> Self {
        self.set(k, v);
        self
    }
    pub fn get(&self, k: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(k).filter(|v| !matches!(v, Json::Null)),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::U64(v) => Some(*v),
            Json::I64(v) if *v >= 0 => Some(*v as u64),
            Json::Num(v) if *v >= 0.0 && v.fract() == 0.0 => Some(*v as u64),
            Json::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::U64(v) => i64::try_from(*v).ok(),
            Json::I64(v) => Some(*v),
            Json::Num(v) if v.fract() == 0.0 => Some(*v as i64),
            Json::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }
    pub fn u64_of(&self, k: &str) -> Option<u64> {
        self.get(k).and_then(Json::as_u64)
    }
    pub fn i64_of(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(Json::as_i64)
    }
    pub fn str_of(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Json::as_str)
    }
    pub fn bool_of(&self, k: &str) -> bool {
        self.get(k).and_then(Json::as_bool).unwrap_or(false)
    }
    pub fn arr_of(&self, k: &str) -> &[Json] {
        self.get(k).map(Json::as_arr).unwrap_or(&[])
    }

    pub fn to_string(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => {
                if n.is_finite() {
                    let _ = write!(out, "{}", n);
                } else {
                    out.push_str("null")
                }
            }
            Json::U64(v) => write_int(out, false, *v),
            Json::I64(v) => write_int(out, *v < 0, v.unsigned_abs()),
            Json::Str(s) => write_str(out, s),
            Json::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser { text, b: text.as_bytes(), i: 0, depth: 0 };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing characters at offset {}", p.i));
        }
        Ok(v)
    }
}

/// An integer, quoted above 2^53 (where a JSON reader's doubles lose it).
/// By hand: the state of a large tree has hundreds of thousands of them,
/// and the formatting machinery took most of its serializing time.
fn write_int(out: &mut String, negative: bool, mut v: u64) {
    let quoted = v > (1u64 << 53);
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    if quoted {
        i -= 1;
        buf[i] = b'"';
    }
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buf[i] = b'-';
    }
    if quoted {
        i -= 1;
        buf[i] = b'"';
    }
    // Only ASCII digits, signs and quotes were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    // Runs of characters that need no escape are copied whole.
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            c if c < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c);
        } else {
            out.push_str(esc);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    /// An unsigned integer without sign, fraction or exponent that fits
    /// in 64 bits (nearly every number phaul writes), and where it ends.
    fn plain_u64(&self) -> Option<(u64, usize)> {
        let mut v: u64 = 0;
        let mut i = self.i;
        if !self.b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        while let Some(&c) = self.b.get(i).filter(|c| c.is_ascii_digit()) {
            v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
            i += 1;
        }
        match self.b.get(i) {
            Some(b'.' | b'e' | b'E' | b'-' | b'+') => None,
            _ => Some((v, i)),
        }
    }
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("bad JSON: {} at offset {}", what, self.i))
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        if self.depth > 64 {
            return self.err("nesting too deep");
        }
        match self.b.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                self.depth += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = match self.value()? {
                        Json::Str(s) => s,
                        _ => return self.err("object key"),
                    };
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return self.err("expected ':'");
                    }
                    self.i += 1;
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            self.depth -= 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                self.depth += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            self.depth -= 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut s = String::new();
                loop {
                    let c = match self.b.get(self.i) {
                        None => return self.err("unterminated string"),
                        Some(c) => *c,
                    };
                    self.i += 1;
                    match c {
                        b'"' => return Ok(Json::Str(s)),
                        b'\\' => {
                            let e = match self.b.get(self.i) {
                                None => return self.err("bad escape"),
                                Some(e) => *e,
                            };
                            self.i += 1;
                            match e {
                                b'"' => s.push('"'),
                                b'\\' => s.push('\\'),
                                b'/' => s.push('/'),
                                b'n' => s.push('\n'),
                                b'r' => s.push('\r'),
                                b't' => s.push('\t'),
                                b'b' => s.push('\u{8}'),
                                b'f' => s.push('\u{c}'),
                                b'u' => {
                                    let hex = self.b.get(self.i..self.i + 4).ok_or("bad \\u escape")?;
                                    let hex = std::str::from_utf8(hex).map_err(|_| "bad \\u escape")?;
                                    let mut cp = u32::from_str_radix(hex, 16).map_err(|_| "bad \\u escape")?;
                                    self.i += 4;
                                    if (0xD800..0xDC00).contains(&cp) && self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                                        let lo = self.b.get(self.i + 2..self.i + 6).ok_or("bad surrogate")?;
                                        let lo = u32::from_str_radix(std::str::from_utf8(lo).map_err(|_| "bad surrogate")?, 16)
                                            .map_err(|_| "bad surrogate")?;
                                        self.i += 6;
                                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3ff);
                                    }
                                    s.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                                }
                                _ => return self.err("bad escape"),
                            }
                        }
                        _ => {
                            // Copy a run of plain bytes (valid UTF-8 since input is &str).
                            let start = self.i - 1;
                            while self.i < self.b.len() && self.b[self.i] != b'"' && self.b[self.i] != b'\\' {
                                self.i += 1;
                            }
                            // Both ends sit next to an ASCII byte (or the
                            // text's end): char boundaries of the &str.
                            s.push_str(self.text.get(start..self.i).ok_or("bad utf-8")?);
                        }
                    }
                }
            }
            Some(b't') if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(_) => {
                if let Some((v, end)) = self.plain_u64() {
                    self.i = end;
                    return Ok(Json::U64(v));
                }
                let start = self.i;
                while self.i < self.b.len() && matches!(self.b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| "bad number")?;
                if t.is_empty() {
                    return self.err("unexpected character");
                }
                if let Ok(v) = t.parse::<u64>() {
                    return Ok(Json::U64(v));
                }
                if let Ok(v) = t.parse::<i64>() {
                    return Ok(Json::I64(v));
                }
                t.parse::<f64>().map(Json::Num).map_err(|_| format!("bad number at offset {}", start))
            }
        }
    }
}

macro_rules! from_int {
    ($($t:ty => $v:ident),*) => { $(impl From<$t> for Json { fn from(x: $t) -> Json { Json::$v(x as _) } })* };
}
from_int!(u8 => U64, u16 => U64, u32 => U64, u64 => U64, usize => U64, i32 => I64, i64 => I64);
impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl From<f64> for Json {
    fn from(x: f64) -> Json {
        Json::Num(x)
    }
}
impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_string())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}
impl From<Vec<Json>> for Json {
    fn from(a: Vec<Json>) -> Json {
        Json::Arr(a)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map(Into::into).unwrap_or(Json::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        let t = r#"{"a":[1,2,"x\n"],"b":{"c":true,"d":null},"e":-5,"f":"18446744073709551615"}"#;
        let v = Json::parse(t).unwrap();
        assert_eq!(v.get("f").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(v.i64_of("e"), Some(-5));
        let again = Json::parse(&v.to_string()).unwrap();
        assert_eq!(v, again);
        assert!(Json::parse("{\"a\":").is_err());
        assert!(Json::parse(&"[".repeat(1000)).is_err());
    }

    /// A state-like document of 2,000 areas: `cargo test --release -- --ignored json_speed --nocapture`.
    #[test]
    #[ignore]
    fn json_speed() {
        let area = |i: u64| {
            Json::obj()
                .with("start", 0x7f00_0000_0000u64 + i * 4096)
                .with("end", 0x7f00_0000_1000u64 + i * 4096)
                .with("prot", 5u64)
                .with("shared", false)
                .with("kind", "file")
                .with("pgoff", i * 4096)
                .with("growsdown", false)
                .with("path", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30")
                .with("flags", "rd ex mr mw me sd")
                .with("file", Json::obj().with("dev", 2049u64).with("ino", 1234567u64).with("size", 2190440u64).with("mtime_ns", 1_700_000_000_123_456_789u64))
        };
        let doc = Json::obj().with("processes", (0..2000).map(area).collect::<Vec<_>>());
        // As in the engine; the second pass is timed.
        crate::session::warm_heap();
        drop(Json::parse(&doc.to_string()).unwrap());
        let t0 = std::time::Instant::now();
        let text = doc.to_string();
        let t1 = std::time::Instant::now();
        let back = Json::parse(&text).unwrap();
        let t2 = std::time::Instant::now();
        assert!(back.to_string() == text);
        eprintln!("{} bytes: write {:?}, parse {:?}", text.len(), t1 - t0, t2 - t1);
    }
}
