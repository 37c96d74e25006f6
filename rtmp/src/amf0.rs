//! AMF0, the serialization of RTMP commands (`connect`, `publish`, `onStatus`)
//! and of `@setDataFrame`/`onMetaData`.
//!
//! Decoding is strict about lengths and nesting (a hostile peer cannot make it
//! recurse without bound or allocate past its input) and tolerant of what real
//! encoders send: AMF3 values switched in with the `0x11` marker are decoded
//! into the same [`Value`] tree (scalars, strings, arrays, plain objects).
//! Encoding covers the types the server writes.

use crate::Error;

/// Deepest nesting of objects/arrays accepted from the network.
const MAX_DEPTH: usize = 32;
/// Largest up-front reservation for an array whose count came from the network.
const MAX_PREALLOC: usize = 1024;

/// One AMF value. AMF3 values met inside AMF0 are mapped onto the nearest AMF0 variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    /// Anonymous object; properties keep their wire order.
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    /// Reference to an earlier complex value (kept as the index; rarely used by encoders).
    Reference(u16),
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    Date {
        millis: f64,
        timezone: i16,
    },
    Xml(String),
    TypedObject {
        class: String,
        properties: Vec<(String, Value)>,
    },
    /// AMF3 ByteArray.
    Bytes(Vec<u8>),
    Unsupported,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Xml(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Properties of an object-like value (object, ECMA array, typed object).
    pub fn properties(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) => Some(p),
            Value::TypedObject { properties, .. } => Some(properties),
            _ => None,
        }
    }

    /// Looks up a property of an object-like value by name.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Shorthand to build an object from `(&str, Value)` pairs.
    pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

/// Decodes every value in `data` (a command or data message body).
pub fn decode_all(data: &[u8]) -> Result<Vec<Value>, Error> {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    while r.pos < r.data.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

/// Decodes one value from the front of `data`; returns it and the bytes consumed.
pub fn decode(data: &[u8]) -> Result<(Value, usize), Error> {
    let mut r = Reader::new(data);
    let v = r.value(0)?;
    Ok((v, r.pos))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Bytes AMF3 string references may still copy: without a bound, a few
    /// bytes of references to one long string would expand without limit.
    ref_budget: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            ref_budget: 2 * data.len() + 1024,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(Error::truncated("AMF0 value"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_be_bytes(a))
    }

    fn string(&mut self, len: usize) -> Result<String, Error> {
        let b = self.take(len)?;
        // Encoders in the wild put Latin-1 in metadata; never fail a stream over it.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn short_string(&mut self) -> Result<String, Error> {
        let len = self.u16()? as usize;
        self.string(len)
    }

    fn long_string(&mut self) -> Result<String, Error> {
        let len = self.u32()? as usize;
        self.string(len)
    }

    /// Properties until the empty-key + object-end marker.
    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Value)>, Error> {
        let mut props = Vec::new();
        loop {
            let key = self.short_string()?;
            if key.is_empty() && self.data.get(self.pos) == Some(&0x09) {
                self.pos += 1;
                return Ok(props);
            }
            let v = self.value(depth + 1)?;
            props.push((key, v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::malformed("AMF0 value", "nesting too deep"));
        }
        let marker = self.u8()?;
        Ok(match marker {
            0x00 => Value::Number(self.f64()?),
            0x01 => Value::Boolean(self.u8()? != 0),
            0x02 => Value::String(self.short_string()?),
            0x03 => Value::Object(self.properties(depth)?),
            0x04 => Value::Unsupported, // MovieClip: reserved, no payload
            0x05 => Value::Null,
            0x06 => Value::Undefined,
            0x07 => Value::Reference(self.u16()?),
            0x08 => {
                // The count is advisory: encoders disagree with it, the end marker decides.
                let _count = self.u32()?;
                Value::EcmaArray(self.properties(depth)?)
            }
            0x09 => return Err(Error::malformed("AMF0 value", "object end outside object")),
            0x0A => {
                let count = self.u32()? as usize;
                // Every element takes at least one byte: bound the loop by the input.
                if count > self.data.len() - self.pos {
                    return Err(Error::truncated("AMF0 strict array"));
                }
                let mut items = Vec::with_capacity(count.min(MAX_PREALLOC));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            0x0B => {
                let millis = self.f64()?;
                let timezone = self.u16()? as i16;
                Value::Date { millis, timezone }
            }
            0x0C => Value::String(self.long_string()?),
            0x0D => Value::Unsupported,
            0x0E => Value::Unsupported, // RecordSet: reserved
            0x0F => Value::Xml(self.long_string()?),
            0x10 => {
                let class = self.short_string()?;
                let properties = self.properties(depth)?;
                Value::TypedObject { class, properties }
            }
            0x11 => {
                let mut amf3 = Amf3Reader {
                    r: self,
                    strings: Vec::new(),
                    objects: 0,
                    traits: Vec::new(),
                };
                amf3.value(depth + 1)?
            }
            _ => return Err(Error::malformed("AMF0 value", "unknown type marker")),
        })
    }
}

/// The AMF3 subset real encoders switch to inside AMF0 (`avmplus-object-marker`).
struct Amf3Reader<'r, 'a> {
    r: &'r mut Reader<'a>,
    strings: Vec<String>,
    /// Count of complex values seen; references to them are kept as
    /// [`Value::Reference`], never copied (copies could expand exponentially).
    objects: usize,
    traits: Vec<Traits>,
}

#[derive(Clone)]
struct Traits {
    class: String,
    dynamic: bool,
    sealed: Vec<String>,
}

impl Amf3Reader<'_, '_> {
    /// U29: 1 to 4 bytes, 7 bits each except the 4th which carries 8.
    fn u29(&mut self) -> Result<u32, Error> {
        let mut v: u32 = 0;
        for i in 0..4 {
            let b = self.r.u8()?;
            if i == 3 {
                return Ok((v << 8) | b as u32);
            }
            v = (v << 7) | (b & 0x7f) as u32;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        let h = self.u29()?;
        if h & 1 == 0 {
            let s = self
                .strings
                .get((h >> 1) as usize)
                .ok_or(Error::malformed("AMF3 string", "bad reference"))?;
            self.r.ref_budget = self
                .r
                .ref_budget
                .checked_sub(s.len())
                .ok_or(Error::malformed("AMF3 string", "too many references"))?;
            return Ok(s.clone());
        }
        let s = self.r.string((h >> 1) as usize)?;
        if !s.is_empty() {
            self.strings.push(s.clone());
        }
        Ok(s)
    }

    fn object_ref(&self, h: u32) -> Result<Value, Error> {
        let index = (h >> 1) as usize;
        if index >= self.objects {
            return Err(Error::malformed("AMF3 object", "bad reference"));
        }
        Ok(Value::Reference(index.min(u16::MAX as usize) as u16))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::malformed("AMF3 value", "nesting too deep"));
        }
        let marker = self.r.u8()?;
        Ok(match marker {
            0x00 => Value::Undefined,
            0x01 => Value::Null,
            0x02 => Value::Boolean(false),
            0x03 => Value::Boolean(true),
            0x04 => {
                // 29-bit signed integer.
                let v = self.u29()?;
                let v = if v & 0x1000_0000 != 0 {
                    v as i32 - 0x2000_0000
                } else {
                    v as i32
                };
                Value::Number(v as f64)
            }
            0x05 => Value::Number(self.r.f64()?),
            0x06 => Value::String(self.string()?),
            0x07 | 0x0B => {
                let h = self.u29()?;
                if h & 1 == 0 {
                    return self.object_ref(h);
                }
                self.objects += 1;
                self.objects += 1;
                Value::Xml(self.r.string((h >> 1) as usize)?)
            }
            0x08 => {
                let h = self.u29()?;
                if h & 1 == 0 {
                    return self.object_ref(h);
                }
                self.objects += 1;
                Value::Date {
                    millis: self.r.f64()?,
                    timezone: 0,
                }
            }
            0x09 => {
                let h = self.u29()?;
                if h & 1 == 0 {
                    return self.object_ref(h);
                }
                // Registered before its members, which may refer to it.
                self.objects += 1;
                let dense = (h >> 1) as usize;
                let mut assoc = Vec::new();
                loop {
                    let key = self.string()?;
                    if key.is_empty() {
                        break;
                    }
                    assoc.push((key, self.value(depth + 1)?));
                }
                if dense > self.r.data.len() - self.r.pos {
                    return Err(Error::truncated("AMF3 array"));
                }
                let mut items = Vec::with_capacity(dense.min(MAX_PREALLOC));
                for _ in 0..dense {
                    items.push(self.value(depth + 1)?);
                }
                if assoc.is_empty() {
                    Value::StrictArray(items)
                } else {
                    Value::EcmaArray(assoc)
                }
            }
            0x0A => {
                let h = self.u29()?;
                if h & 1 == 0 {
                    return self.object_ref(h);
                }
                self.objects += 1;
                let traits = if h & 2 == 0 {
                    self.traits
                        .get((h >> 2) as usize)
                        .cloned()
                        .ok_or(Error::malformed("AMF3 object", "bad traits reference"))?
                } else {
                    if h & 4 != 0 {
                        return Err(Error::malformed("AMF3 object", "externalizable"));
                    }
                    let dynamic = h & 8 != 0;
                    let count = (h >> 4) as usize;
                    let class = self.string()?;
                    if count > self.r.data.len() - self.r.pos {
                        return Err(Error::truncated("AMF3 traits"));
                    }
                    let mut sealed = Vec::with_capacity(count.min(MAX_PREALLOC));
                    for _ in 0..count {
                        sealed.push(self.string()?);
                    }
                    let t = Traits {
                        class,
                        dynamic,
                        sealed,
                    };
                    self.traits.push(t.clone());
                    t
                };
                // Member names are copied into every object: charge them.
                let names: usize = traits.sealed.iter().map(String::len).sum();
                self.r.ref_budget = self
                    .r
                    .ref_budget
                    .checked_sub(names + traits.class.len())
                    .ok_or(Error::malformed("AMF3 object", "too many references"))?;
                let mut props = Vec::new();
                for name in &traits.sealed {
                    props.push((name.clone(), self.value(depth + 1)?));
                }
                if traits.dynamic {
                    loop {
                        let key = self.string()?;
                        if key.is_empty() {
                            break;
                        }
                        props.push((key, self.value(depth + 1)?));
                    }
                }
                if traits.class.is_empty() {
                    Value::Object(props)
                } else {
                    Value::TypedObject {
                        class: traits.class,
                        properties: props,
                    }
                }
            }
            0x0C => {
                let h = self.u29()?;
                if h & 1 == 0 {
                    return self.object_ref(h);
                }
                self.objects += 1;
                Value::Bytes(self.r.take((h >> 1) as usize)?.to_vec())
            }
            _ => return Err(Error::malformed("AMF3 value", "unsupported type marker")),
        })
    }
}

/// Appends the AMF0 encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Number(n) => {
            out.push(0x00);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Boolean(b) => {
            out.push(0x01);
            out.push(*b as u8);
        }
        Value::String(s) => encode_string(s, out),
        Value::Object(props) => {
            out.push(0x03);
            encode_properties(props, out);
        }
        Value::Null => out.push(0x05),
        Value::Undefined | Value::Unsupported => out.push(0x06),
        Value::Reference(i) => {
            out.push(0x07);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::EcmaArray(props) => {
            out.push(0x08);
            out.extend_from_slice(&(props.len() as u32).to_be_bytes());
            encode_properties(props, out);
        }
        Value::StrictArray(items) => {
            out.push(0x0A);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for i in items {
                encode(i, out);
            }
        }
        Value::Date { millis, timezone } => {
            out.push(0x0B);
            out.extend_from_slice(&millis.to_be_bytes());
            out.extend_from_slice(&timezone.to_be_bytes());
        }
        Value::Xml(s) => {
            out.push(0x0F);
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::TypedObject { class, properties } => {
            out.push(0x10);
            encode_key(class, out);
            encode_properties(properties, out);
        }
        // AMF0 has no byte array: the server never sends one; keep the stream parseable.
        Value::Bytes(_) => out.push(0x06),
    }
}

fn encode_string(s: &str, out: &mut Vec<u8>) {
    if s.len() <= u16::MAX as usize {
        out.push(0x02);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    } else {
        out.push(0x0C);
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn encode_key(k: &str, out: &mut Vec<u8>) {
    // Keys are short by construction; truncate rather than write a corrupt length.
    let k = &k.as_bytes()[..k.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(k);
}

fn encode_properties(props: &[(String, Value)], out: &mut Vec<u8>) {
    for (k, v) in props {
        encode_key(k, out);
        encode(v, out);
    }
    out.extend_from_slice(&[0x00, 0x00, 0x09]);
}

/// Encodes a sequence of values (a command: name, transaction id, arguments).
pub fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_connect_command() {
        let values = vec![
            Value::String("connect".into()),
            Value::Number(1.0),
            Value::object([
                ("app", Value::String("live".into())),
                ("tcUrl", Value::String("rtmp://h/live".into())),
                ("fpad", Value::Boolean(false)),
                ("audioCodecs", Value::Number(3191.0)),
                ("nested", Value::object([("n", Value::Null)])),
            ]),
            Value::Null,
            Value::Undefined,
            Value::EcmaArray(vec![("duration".into(), Value::Number(0.0))]),
            Value::StrictArray(vec![Value::Number(1.0), Value::String("x".into())]),
            Value::Date {
                millis: 1.5,
                timezone: -60,
            },
            Value::TypedObject {
                class: "C".into(),
                properties: vec![("a".into(), Value::Boolean(true))],
            },
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes).unwrap(), values);
        assert_eq!(values[2].get("app").and_then(Value::as_str), Some("live"));
    }

    #[test]
    fn decodes_hand_built_bytes() {
        // "_result", 1.0, null
        let bytes = [
            0x02, 0x00, 0x07, b'_', b'r', b'e', b's', b'u', b'l', b't', 0x00, 0x3f, 0xf0, 0, 0, 0,
            0, 0, 0, 0x05,
        ];
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![
                Value::String("_result".into()),
                Value::Number(1.0),
                Value::Null
            ]
        );
    }

    #[test]
    fn long_strings_use_the_long_marker() {
        let s = "a".repeat(70_000);
        let bytes = encode_all(&[Value::String(s.clone())]);
        assert_eq!(bytes[0], 0x0C);
        assert_eq!(decode_all(&bytes).unwrap(), vec![Value::String(s)]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        // Truncated string.
        assert!(decode_all(&[0x02, 0x00, 0x05, b'a']).is_err());
        // Truncated number.
        assert!(decode_all(&[0x00, 0x3f]).is_err());
        // Unknown marker.
        assert!(decode_all(&[0x42]).is_err());
        // Object end at top level.
        assert!(decode_all(&[0x09]).is_err());
        // Object without end marker.
        assert!(decode_all(&[0x03, 0x00, 0x01, b'a', 0x05]).is_err());
        // Strict array announcing 4 billion items.
        assert!(decode_all(&[0x0A, 0xff, 0xff, 0xff, 0xff, 0x05]).is_err());
        // Deep nesting: 1000 nested objects.
        let mut deep = Vec::new();
        for _ in 0..1000 {
            deep.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        assert!(decode_all(&deep).is_err());
    }

    #[test]
    fn amf3_values_inside_amf0_are_tolerated() {
        // avmplus marker, then AMF3: dynamic anonymous object {a: 5, s: "hi", s2: ref "hi"}.
        let bytes = [
            0x11, 0x0A, 0x0B, 0x01, // object, inline traits, dynamic, 0 sealed, class ""
            0x03, b'a', 0x04, 0x05, // "a": integer 5
            0x03, b's', 0x06, 0x05, b'h', b'i', // "s": "hi"
            0x05, b's', b'2', 0x06, 0x04, // "s2": string ref 2 (table: "a", "s", "hi")
            0x01, // end of dynamic members
        ];
        let v = decode_all(&bytes).unwrap();
        assert_eq!(
            v,
            vec![Value::object([
                ("a", Value::Number(5.0)),
                ("s", Value::String("hi".into())),
                ("s2", Value::String("hi".into())),
            ])]
        );
        // Negative 29-bit integer: -1 is 0xFF 0xFF 0xFF 0xFF.
        assert_eq!(
            decode_all(&[0x11, 0x04, 0xff, 0xff, 0xff, 0xff]).unwrap(),
            vec![Value::Number(-1.0)]
        );
        // Bad string reference.
        assert!(decode_all(&[0x11, 0x06, 0x08]).is_err());
        // Object references stay references (index checked), never copies.
        assert_eq!(
            decode_all(&[0x11, 0x09, 0x05, 0x01, 0x09, 0x01, 0x01, 0x09, 0x00]).unwrap(),
            vec![Value::StrictArray(vec![
                Value::StrictArray(vec![]),
                Value::Reference(0)
            ])]
        );
        assert!(decode_all(&[0x11, 0x09, 0x03, 0x01, 0x09, 0x04]).is_err());
    }

    #[test]
    fn amf3_trait_references_cannot_expand_without_bound() {
        // Array of 100_001 objects: the first defines traits with one sealed
        // member whose name is 1000 bytes; the rest refer to those traits.
        let mut b = vec![0x11, 0x09];
        let h: u32 = (100_001 << 1) | 1;
        b.extend_from_slice(&[
            0x80 | (h >> 14) as u8,
            0x80 | ((h >> 7) & 0x7f) as u8,
            (h & 0x7f) as u8,
        ]);
        b.push(0x01);
        b.extend_from_slice(&[0x0A, 0x13, 0x01, 0x8f, 0x51]); // inline traits, 1 sealed, class ""
        b.extend(std::iter::repeat_n(b'n', 1000));
        b.push(0x01); // member value: null
        for _ in 0..100_000 {
            b.extend_from_slice(&[0x0A, 0x01, 0x01]); // traits ref 0, value null
        }
        assert!(decode_all(&b).is_err());
    }

    #[test]
    fn amf3_string_references_cannot_expand_without_bound() {
        // One 1000-byte string, then 100_000 two-byte references to it.
        let mut b = vec![0x11, 0x09];
        let n: u32 = 100_001;
        // U29 of (n << 1 | 1) in 3 bytes: 0b1xxxxxxx 0b1xxxxxxx 0b0xxxxxxx.
        let h = (n << 1) | 1;
        b.extend_from_slice(&[
            0x80 | (h >> 14) as u8,
            0x80 | ((h >> 7) & 0x7f) as u8,
            (h & 0x7f) as u8,
        ]);
        b.push(0x01); // no associative part
        b.extend_from_slice(&[0x06, 0x8f, 0x51]); // string of 1000 bytes: (1000 << 1) | 1 = 2001
        b.extend(std::iter::repeat_n(b'x', 1000));
        for _ in 0..100_000 {
            b.extend_from_slice(&[0x06, 0x00]);
        }
        assert!(decode_all(&b).is_err());
    }
}
