//! HTTP headers as the protocol carries them: an object mapping each name to an array of values.
//!
//! [`Headers`] keeps entries in arrival order in one `Vec`, and each entry's values in a
//! `SmallVec` whose first value is stored inline. A name or value is either a range of the
//! headers' one shared text (the frame they were decoded from, or the buffer
//! [`Headers::copy_from`] filled), which costs no allocation and no reference count of its own,
//! or a string of its own ([`Headers::append`] and the like). So decoding a request's headers or
//! copying a proxy's own costs one reference to that text and one list, however many headers
//! there are, and cloning them costs the same.
//!
//! Building headers from the wire (decoding, [`Headers::append_exact`]) merges repeated names
//! in time linear in the number of headers, however many distinct names a peer sends: past
//! [`INDEXED_FROM`] names an exact-name hash index takes over from the linear scan. Decoding
//! counts every value against the [`HeaderLimits`](crate::limits::HeaderLimits) of the message.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::iter::FusedIterator;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use crate::byte_str::ByteStr;

/// A header name or value as [`Headers`] holds it.
#[derive(Clone, Debug)]
pub(crate) enum Text {
    /// `start..end` of the headers' shared text; UTF-8 (checked, or copied from a `str`, when
    /// the range was made).
    Range(u32, u32),
    /// A string of its own.
    Own(ByteStr),
}

impl Text {
    /// `text[range]` as a range of it, if it is UTF-8 and the range fits in 32 bits. Most
    /// header text is ASCII, which is checked a word at a time.
    #[inline]
    pub(crate) fn checked(text: &Bytes, range: Range<usize>) -> Option<Self> {
        let bytes = text.get(range.clone())?;
        if !bytes.is_ascii() {
            std::str::from_utf8(bytes).ok()?;
        }
        Self::range(range)
    }

    /// A range of text copied from `str`s, holding whole ones (so UTF-8).
    #[inline]
    fn range(range: Range<usize>) -> Option<Self> {
        Some(Self::Range(
            u32::try_from(range.start).ok()?,
            u32::try_from(range.end).ok()?,
        ))
    }

    /// Length in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Range(start, end) => (end - start) as usize,
            Self::Own(s) => s.len(),
        }
    }

    /// The string, `text` being the shared text of the headers holding it.
    #[inline]
    fn resolve<'a>(&'a self, text: &'a Bytes) -> &'a str {
        match self {
            Self::Range(start, end) => {
                let bytes = &text[*start as usize..*end as usize];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: a range is made only over UTF-8 text (`checked` checks it; `range`
                // is given whole `str`s), and the text it refers to never changes.
                #[allow(unsafe_code)]
                unsafe {
                    std::str::from_utf8_unchecked(bytes)
                }
            }
            Self::Own(s) => s.as_str(),
        }
    }

    /// The string as one of its own, sharing `text`'s allocation.
    fn shared(self, text: &Bytes) -> ByteStr {
        match self {
            Self::Range(..) => ByteStr::from_copied_text(text, self.span()),
            Self::Own(s) => s,
        }
    }

    fn span(&self) -> Range<usize> {
        match self {
            Self::Range(start, end) => *start as usize..*end as usize,
            Self::Own(_) => 0..0,
        }
    }
}

/// The values of one name, as a header's texts (one stored inline).
pub(crate) type TextValues = SmallVec<[Text; 1]>;

#[derive(Clone, Debug)]
struct Entry {
    name: Text,
    values: TextValues,
}

/// Past this many distinct names, exact-name lookups while building headers go through a hash
/// index rather than a scan, so that merging stays linear in the input.
pub const INDEXED_FROM: usize = 64;

/// An ordered multi-map of HTTP headers.
///
/// ```
/// use agent_protocol_core::Headers;
/// let mut headers = Headers::new();
/// headers.append("Accept", "text/html");
/// headers.append("accept", "application/json");
/// headers.append("host", "example.com");
/// assert_eq!(headers.get("ACCEPT").unwrap().len(), 2);
/// assert_eq!(headers.first("host"), Some("example.com"));
/// let json = serde_json::to_string(&headers).unwrap();
/// assert_eq!(json, r#"{"Accept":["text/html","application/json"],"host":["example.com"]}"#);
/// for (name, values) in headers.entries() {
///     println!("{name}: {}", values.collect::<Vec<_>>().join(", "));
/// }
/// // Flattening moves each string out; nothing is copied.
/// let flat: Vec<_> = headers.into_flat().collect();
/// assert_eq!(flat.len(), 3);
/// ```
#[derive(Clone, Default)]
pub struct Headers {
    /// The text that names and values held as ranges lie in.
    text: Bytes,
    entries: Vec<Entry>,
    /// Exact name -> position, kept while names are appended by exact match and there are more
    /// than [`INDEXED_FROM`] of them; dropped by any other change (rebuilt when needed).
    index: Option<Box<NameIndex>>,
    /// Values held, and bytes of names (once per entry) and values: kept as headers change, so
    /// [`Headers::load`] is free however many headers there are.
    values: usize,
    bytes: usize,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .entries()
                .zip(other.entries())
                .all(|((n1, v1), (n2, v2))| n1 == n2 && v1.eq(v2))
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

/// Positions of entries by a keyed hash of their exact name. Keyed with a per-process random
/// key, so a peer cannot choose names that collide; a collision is still handled (by a scan).
#[derive(Clone, Debug, Default)]
struct NameIndex {
    hasher: RandomState,
    positions: HashMap<u64, usize>,
}

impl NameIndex {
    fn build(text: &Bytes, entries: &[Entry]) -> Box<Self> {
        let mut index = Box::new(NameIndex {
            hasher: RandomState::new(),
            positions: HashMap::with_capacity(entries.len() * 2),
        });
        for (i, e) in entries.iter().enumerate() {
            let h = index.hasher.hash_one(e.name.resolve(text));
            index.positions.entry(h).or_insert(i);
        }
        index
    }
}

/// The values of one name, in order: an iterator of `&str` (see [`Headers::get`]).
///
/// ```
/// use agent_protocol_core::Headers;
/// let headers = Headers::copy_from([("accept", "text/html"), ("accept", "*/*")]);
/// let values = headers.get("accept").unwrap();
/// assert_eq!(values.len(), 2);
/// assert!(values.clone().any(|v| v == "*/*"));
/// assert_eq!(values.collect::<Vec<_>>(), ["text/html", "*/*"]);
/// ```
#[derive(Clone)]
pub struct HeaderValues<'a> {
    text: &'a Bytes,
    values: std::slice::Iter<'a, Text>,
}

impl<'a> Iterator for HeaderValues<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let text = self.text;
        self.values.next().map(|v| v.resolve(text))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.values.size_hint()
    }
}

impl DoubleEndedIterator for HeaderValues<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let text = self.text;
        self.values.next_back().map(|v| v.resolve(text))
    }
}

impl ExactSizeIterator for HeaderValues<'_> {}
impl FusedIterator for HeaderValues<'_> {}

impl fmt::Debug for HeaderValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl Serialize for HeaderValues<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.clone())
    }
}

/// The entries of [`Headers`] in order: each name with its values (see [`Headers::entries`]).
#[derive(Clone)]
pub struct HeaderEntries<'a> {
    text: &'a Bytes,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for HeaderEntries<'a> {
    type Item = (&'a str, HeaderValues<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let text = self.text;
        self.entries.next().map(|e| {
            let values = HeaderValues {
                text,
                values: e.values.iter(),
            };
            (e.name.resolve(text), values)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for HeaderEntries<'_> {}
impl FusedIterator for HeaderEntries<'_> {}

impl Headers {
    /// An empty header set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty header set with room for `names` distinct names.
    pub fn with_capacity(names: usize) -> Self {
        Self {
            entries: Vec::with_capacity(names),
            ..Self::default()
        }
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no header at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of values across all names.
    pub fn value_count(&self) -> usize {
        self.values
    }

    /// The values held and the bytes of their names and values, a name counting once per
    /// entry, as [`HeaderLimits`](crate::limits::HeaderLimits) counts them. Constant time.
    ///
    /// ```
    /// use agent_protocol_core::Headers;
    /// let mut h = Headers::new();
    /// h.append("set-cookie", "a=1");
    /// h.append("set-cookie", "b=2");
    /// assert_eq!(h.load(), (2, "set-cookie".len() + 6));
    /// h.insert("set-cookie", "c");
    /// assert_eq!(h.load(), (1, "set-cookie".len() + 1));
    /// h.remove("set-cookie");
    /// assert_eq!(h.load(), (0, 0));
    /// ```
    pub fn load(&self) -> (usize, usize) {
        (self.values, self.bytes)
    }

    /// Counts a value added.
    fn count_value(&mut self, value: &str) {
        self.values += 1;
        self.bytes += value.len();
    }

    /// Counts a new entry's name and value.
    fn count_entry(&mut self, name: &str, value: &str) {
        self.bytes += name.len();
        self.count_value(value);
    }

    /// Uncounts an entry's values (and its name, with `name`).
    fn uncount(&mut self, name: Option<&Text>, values: &[Text]) {
        self.bytes -= name.map_or(0, Text::len);
        for value in values {
            self.values -= 1;
            self.bytes -= value.len();
        }
    }

    /// Adds a value, after any existing values of the same name (case-insensitive).
    pub fn append(&mut self, name: impl Into<ByteStr>, value: impl Into<ByteStr>) {
        let name = name.into();
        let value = value.into();
        self.index = None;
        match self.position(&name) {
            Some(i) => {
                self.count_value(&value);
                self.entries[i].values.push(Text::Own(value));
            }
            None => {
                self.count_entry(&name, &value);
                self.entries.push(Entry {
                    name: Text::Own(name),
                    values: smallvec::smallvec![Text::Own(value)],
                });
            }
        }
    }

    /// Adds a value after any existing values of exactly `name` (case-sensitive), moving both
    /// strings in. Transports that carry headers as a flat list of `(name, value)` pairs (gRPC)
    /// rebuild [`Headers`] with it, so names that differ only in case stay apart as the sender
    /// wrote them and `into_flat` followed by `append_exact` gives back the same headers.
    ///
    /// ```
    /// use agent_protocol_core::Headers;
    /// let mut h = Headers::new();
    /// for (n, v) in [("a", "1"), ("A", "2"), ("a", "3")] {
    ///     h.append_exact(n.to_string(), v.to_string());
    /// }
    /// assert_eq!(h.len(), 2);
    /// assert!(h.entries().next().unwrap().1.eq(["1", "3"]));
    /// ```
    pub fn append_exact(&mut self, name: impl Into<ByteStr>, value: impl Into<ByteStr>) {
        let (name, value) = (name.into(), value.into());
        let bytes = value.len();
        self.push_exact(
            Text::Own(name),
            smallvec::smallvec![Text::Own(value)],
            bytes,
        );
    }

    /// Replaces every value of `name` with one value.
    pub fn insert(&mut self, name: impl Into<ByteStr>, value: impl Into<ByteStr>) {
        let name = name.into();
        let value = value.into();
        self.index = None;
        match self.position(&name) {
            Some(i) => {
                let old = std::mem::take(&mut self.entries[i].values);
                self.uncount(None, &old);
                self.count_value(&value);
                self.entries[i].values.push(Text::Own(value));
            }
            None => {
                self.count_entry(&name, &value);
                self.entries.push(Entry {
                    name: Text::Own(name),
                    values: smallvec::smallvec![Text::Own(value)],
                });
            }
        }
    }

    /// Removes a name (case-insensitive) and returns its values.
    pub fn remove(&mut self, name: &str) -> Option<Vec<ByteStr>> {
        let i = self.position(name)?;
        self.index = None;
        let entry = self.entries.remove(i);
        self.uncount(Some(&entry.name), &entry.values);
        let text = &self.text;
        Some(entry.values.into_iter().map(|v| v.shared(text)).collect())
    }

    /// The values of `name` (case-insensitive), in order.
    pub fn get(&self, name: &str) -> Option<HeaderValues<'_>> {
        self.position(name).map(|i| HeaderValues {
            text: &self.text,
            values: self.entries[i].values.iter(),
        })
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|mut v| v.next())
    }

    /// Each name with its values, in order.
    pub fn entries(&self) -> HeaderEntries<'_> {
        HeaderEntries {
            text: &self.text,
            entries: self.entries.iter(),
        }
    }

    /// Iterates `(name, value)` pairs without allocating.
    pub fn iter_flat(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries()
            .flat_map(|(name, values)| values.map(move |v| (name, v)))
    }

    /// Consumes the headers into `(name, value)` pairs, each string sharing the headers'
    /// text or moved out of them: nothing is copied.
    pub fn into_flat(self) -> impl Iterator<Item = (ByteStr, ByteStr)> {
        let text = self.text;
        self.entries.into_iter().flat_map(move |entry| {
            let Entry { name, values } = entry;
            let name = name.shared(&text);
            let text = text.clone();
            values
                .into_iter()
                .map(move |v| (name.clone(), v.shared(&text)))
        })
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name.resolve(&self.text).eq_ignore_ascii_case(name))
    }

    /// Adds values after any existing values of exactly `name`. Decoding and
    /// [`Headers::append_exact`] come through here: two names that differ only in case are kept
    /// apart as the sender wrote them (lower-casing them would lose which value came with which
    /// spelling). Amortised constant time per call, whatever the number of names.
    /// `value_bytes` is the length of `values` together, which callers have at hand.
    fn push_exact(&mut self, name: Text, values: TextValues, value_bytes: usize) {
        self.values += values.len();
        self.bytes += value_bytes;
        let text = &self.text;
        let exact = name.resolve(text);
        // Repeated names usually arrive together: look at the last entry first.
        if let Some(last) = self.entries.last_mut() {
            if last.name.resolve(text) == exact {
                last.values.extend(values);
                return;
            }
        }
        let found = if self.entries.len() <= INDEXED_FROM {
            self.entries
                .iter()
                .position(|e| e.name.resolve(text) == exact)
        } else {
            self.indexed_position(&name)
        };
        match found {
            Some(i) => self.entries[i].values.extend(values),
            None => self.push_entry(name, values),
        }
    }

    /// Adds an entry for `name`, which no entry has yet.
    fn push_entry(&mut self, name: Text, values: TextValues) {
        self.bytes += name.len();
        if let Some(index) = &mut self.index {
            let h = index.hasher.hash_one(name.resolve(&self.text));
            index.positions.entry(h).or_insert(self.entries.len());
        }
        self.entries.push(Entry { name, values });
    }

    /// The position of exactly `name`, through the index (built on first use).
    fn indexed_position(&mut self, name: &Text) -> Option<usize> {
        let (text, entries) = (&self.text, &self.entries);
        let name = name.resolve(text);
        let index = self
            .index
            .get_or_insert_with(|| NameIndex::build(text, entries));
        let &i = index.positions.get(&index.hasher.hash_one(name))?;
        if entries[i].name.resolve(text) == name {
            Some(i)
        } else {
            // Two names with one 64-bit keyed hash: practically never; stay correct anyway.
            entries.iter().position(|e| e.name.resolve(text) == name)
        }
    }
}

/// Builds headers from empty by exact name, as decoding and copying do, over one shared text
/// that names and values may be ranges of.
///
/// Merging a repeated name means looking for an earlier entry of it, a scan of every entry so
/// far: quadratic in the names of a request, most of the decoding work of its headers. Nearly
/// every name is new, and a 128-bit filter of the names seen so far (by length and first and
/// last byte) says so without the scan; only a name the filter has seen goes through
/// [`Headers::push_exact`]. Names chosen to collide in the filter only cost the scan, which stays
/// linear in the input (past [`INDEXED_FROM`] names it goes through the index).
pub(crate) struct ExactBuilder {
    headers: Headers,
    seen: u128,
}

impl ExactBuilder {
    /// Headers whose ranges lie in `text`, with room for `names` names.
    pub(crate) fn over(text: Bytes, names: usize) -> Self {
        let mut headers = Headers::with_capacity(names);
        headers.text = text;
        Self { headers, seen: 0 }
    }

    /// Adds `values` (`value_bytes` long together) after any earlier values of exactly `name`.
    #[inline]
    pub(crate) fn push(&mut self, name: Text, values: TextValues, value_bytes: usize) {
        let bit = 1u128 << filter_slot(name.resolve(&self.headers.text).as_bytes());
        if self.seen & bit != 0 {
            self.headers.push_exact(name, values, value_bytes);
            return;
        }
        self.seen |= bit;
        self.headers.values += values.len();
        self.headers.bytes += value_bytes;
        self.headers.push_entry(name, values);
    }

    pub(crate) fn finish(self) -> Headers {
        self.headers
    }
}

/// Which of the filter's 128 bits stands for `name`.
#[inline]
fn filter_slot(name: &[u8]) -> u32 {
    let first = u32::from(name.first().copied().unwrap_or(0));
    let last = u32::from(name.last().copied().unwrap_or(0));
    let mixed = (name.len() as u32) ^ (first << 8) ^ (last << 16);
    mixed.wrapping_mul(0x9e37_79b9) >> 25
}

/// Header text read from a proxy's own request (borrowed pairs, an [`http::HeaderMap`]) lands
/// in one buffer: the headers cost two allocations (that text and the entries) however many
/// there are, rather than two per header. Pairs are merged by exact name, as decoding merges
/// them, so building stays linear in the number of headers whatever names a client sent.
impl Headers {
    /// Headers holding a copy of `pairs`, all their text in one shared buffer.
    ///
    /// A proxy that has the request's headers as borrowed text builds the event's headers with
    /// two allocations, instead of two per header as [`Headers::append`] with `&str` costs; and
    /// cloning them costs the same two. Values of the same name (exactly as written) are kept
    /// together in order.
    ///
    /// ```
    /// use agent_protocol_core::Headers;
    /// let request = [("host", "example.com"), ("accept", "text/html"), ("accept", "*/*")];
    /// let headers = Headers::copy_from(request);
    /// assert_eq!(headers.len(), 2);
    /// assert!(headers.get("accept").unwrap().eq(["text/html", "*/*"]));
    /// // Every string is a slice of one buffer.
    /// let host = headers.first("host").unwrap();
    /// let accept = headers.first("accept").unwrap();
    /// assert_eq!(host.as_ptr().wrapping_add(host.len()), accept.as_ptr().wrapping_sub("accept".len()));
    /// ```
    pub fn copy_from<'a, I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: Clone,
    {
        let pairs = pairs.into_iter();
        let text_len = pairs.clone().map(|(n, v)| n.len() + v.len()).sum();
        Self::copy_text(pairs.map(|(n, v)| (n, Cow::Borrowed(v))), text_len)
    }

    /// Copies `pairs` (whose text is `text_len` bytes together) into one buffer and makes every
    /// name and value a range of it.
    fn copy_text<'a>(
        pairs: impl Iterator<Item = (&'a str, Cow<'a, str>)>,
        text_len: usize,
    ) -> Self {
        // Lengths of each name and value in order; inline for up to 32 headers.
        let mut lengths: SmallVec<[usize; 64]> = SmallVec::new();
        let mut text = BytesMut::with_capacity(text_len);
        for (name, value) in pairs {
            for part in [name, &value] {
                text.extend_from_slice(part.as_bytes());
                lengths.push(part.len());
            }
        }
        let text = text.freeze();
        let mut headers = ExactBuilder::over(text.clone(), lengths.len() / 2);
        let mut at = 0;
        let mut next = |len: usize| {
            let range = at..at + len;
            at = range.end;
            // Past 4 GiB of text (never, for real headers) a string is a slice of its own.
            Text::range(range.clone())
                .unwrap_or_else(|| Text::Own(ByteStr::from_copied_text(&text, range)))
        };
        for pair in lengths.chunks_exact(2) {
            let name = next(pair[0]);
            let value = next(pair[1]);
            let bytes = value.len();
            headers.push(name, smallvec::smallvec![value], bytes);
        }
        headers.finish()
    }
}

/// The headers of an `http` request or response, for a proxy that holds them in an
/// [`http::HeaderMap`] (Pingora, hyper): two allocations for all of them.
///
/// A value that is not UTF-8 (obs-text bytes a client sent) is carried with each invalid
/// sequence replaced by U+FFFD rather than dropped: an agent must still see that the header
/// was there, or a client could hide a header from a WAF with one stray byte.
///
/// ```
/// use agent_protocol_core::Headers;
/// let mut map = http::HeaderMap::new();
/// map.append("cookie", "a=1".parse().unwrap());
/// map.append("cookie", "b=2".parse().unwrap());
/// map.append("x-raw", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
/// let headers = Headers::from(&map);
/// assert!(headers.get("cookie").unwrap().eq(["a=1", "b=2"]));
/// assert_eq!(headers.first("x-raw"), Some("caf\u{fffd}"));
/// ```
impl From<&http::HeaderMap> for Headers {
    fn from(map: &http::HeaderMap) -> Self {
        fn text(v: &http::HeaderValue) -> Cow<'_, str> {
            // Not `HeaderValue::to_str`, which refuses UTF-8 beyond ASCII.
            String::from_utf8_lossy(v.as_bytes())
        }
        let text_len = map
            .iter()
            .map(|(n, v)| n.as_str().len() + text(v).len())
            .sum();
        Self::copy_text(map.iter().map(|(n, v)| (n.as_str(), text(v))), text_len)
    }
}

impl<N: Into<ByteStr>, V: Into<ByteStr>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut headers = Headers::with_capacity(iter.size_hint().0);
        for (n, v) in iter {
            headers.append(n, v);
        }
        headers
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, values) in self.entries() {
            map.serialize_entry(name, &values)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = Headers;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of header names to arrays of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
        // Cap the hint: it comes from the peer. JSON gives none; start with room for a typical
        // browser request so the list does not grow four times on the way to 20 headers.
        let names = map.size_hint().unwrap_or(24).min(128);
        let mut headers = ExactBuilder::over(Bytes::new(), names);
        while let Some(name) = map.next_key::<ByteStr>()? {
            charge(0, name.len())?;
            let values: ValuesOrOne = map.next_value()?;
            headers.push(Text::Own(name), values.values, values.bytes);
        }
        Ok(headers.finish())
    }
}

/// Counts header values and bytes against the limits of the message being decoded.
fn charge<E: serde::de::Error>(values: usize, bytes: usize) -> Result<(), E> {
    crate::limits::charge(values, bytes).map_err(E::custom)
}

/// Header values: an array of strings, or (leniently) a single string; and their length
/// together, counted as they are charged to the limits.
struct ValuesOrOne {
    values: TextValues,
    bytes: usize,
}

impl<'de> Deserialize<'de> for ValuesOrOne {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValuesOrOne;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of header values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ValuesOrOne, A::Error> {
                let mut values = TextValues::new();
                let mut bytes = 0;
                while let Some(v) = seq.next_element::<ByteStr>()? {
                    charge(1, v.len())?;
                    bytes += v.len();
                    values.push(Text::Own(v));
                }
                Ok(ValuesOrOne { values, bytes })
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<ValuesOrOne, E> {
                charge(1, v.len())?;
                Ok(ValuesOrOne {
                    bytes: v.len(),
                    values: smallvec::smallvec![Text::Own(ByteStr::decoded(v))],
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ValuesOrOne, E> {
                charge(1, v.len())?;
                Ok(ValuesOrOne {
                    bytes: v.len(),
                    values: smallvec::smallvec![Text::Own(ByteStr::from(v))],
                })
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ValuesOrOne, E> {
                charge(1, v.len())?;
                Ok(ValuesOrOne {
                    bytes: v.len(),
                    values: smallvec::smallvec![Text::Own(ByteStr::from(v))],
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_map_of_arrays_in_order() {
        let h: Headers =
            serde_json::from_str(r#"{"b":["1","2"],"a":["3"],"c":"lenient"}"#).unwrap();
        let flat: Vec<_> = h.iter_flat().collect();
        assert_eq!(flat, [("b", "1"), ("b", "2"), ("a", "3"), ("c", "lenient")]);
    }

    #[test]
    fn names_differing_in_case_are_kept_apart_when_decoding() {
        let h: Headers = serde_json::from_str(r#"{"X-A":["1"],"x-a":["2"]}"#).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.value_count(), 2);
    }

    #[test]
    fn into_flat_keeps_every_value() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("a", "2");
        h.append("b", "3");
        let flat: Vec<_> = h.into_flat().collect();
        assert_eq!(
            flat,
            [
                (ByteStr::from("a"), ByteStr::from("1")),
                (ByteStr::from("a"), ByteStr::from("2")),
                (ByteStr::from("b"), ByteStr::from("3"))
            ]
        );
    }

    #[test]
    fn insert_and_remove() {
        let mut h: Headers = [("a", "1"), ("a", "2")].into_iter().collect();
        h.insert("A", "x");
        assert!(h.get("a").unwrap().eq(["x"]));
        assert_eq!(h.remove("a").unwrap().len(), 1);
        assert!(h.is_empty());
    }

    /// The load counted from scratch.
    fn recount(h: &Headers) -> (usize, usize) {
        h.entries().fold((0, 0), |(count, bytes), (name, values)| {
            let n = values.len();
            let values: usize = values.map(str::len).sum();
            (count + n, bytes + name.len() + values)
        })
    }

    proptest::proptest! {
        /// The kept load always equals a recount, whatever sequence of changes made the headers
        /// (past the index threshold too).
        #[test]
        fn load_is_kept_exactly(ops in proptest::collection::vec((0u8..4, 0u8..80, "[a-c]{0,3}"), 0..300)) {
            let mut h = Headers::new();
            for (op, name, value) in ops {
                let name = format!("n{name}");
                match op {
                    0 => h.append(name.clone(), value),
                    1 => h.append_exact(name.clone(), value),
                    2 => h.insert(name.clone(), value),
                    _ => {
                        h.remove(&name);
                    }
                }
                proptest::prop_assert_eq!(h.load(), recount(&h));
            }
            let decoded: Headers = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
            proptest::prop_assert_eq!(decoded.load(), recount(&decoded));
        }

        /// Copying borrowed pairs into one buffer gives the headers that appending each pair
        /// by exact name gives (names past the index threshold too, non-ASCII text included),
        /// with the same load.
        #[test]
        fn copy_from_equals_appending_each(pairs in proptest::collection::vec(("[a-cA]{0,2}|n[0-9]{1,2}", "[a-zé\u{1F600} ]{0,4}"), 0..150)) {
            let copied = Headers::copy_from(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let mut appended = Headers::new();
            for (n, v) in &pairs {
                appended.append_exact(n.as_str(), v.as_str());
            }
            proptest::prop_assert_eq!(&copied, &appended);
            proptest::prop_assert_eq!(copied.load(), appended.load());
            proptest::prop_assert_eq!(copied.load(), recount(&copied));
        }

        /// An `http::HeaderMap` converts to what its pairs give, non-UTF-8 bytes replaced.
        #[test]
        fn header_map_converts_pair_by_pair(pairs in proptest::collection::vec(("[a-c]{1,2}|n[0-9]{1,2}", proptest::collection::vec(0x20u8..=0xff, 0..6)), 0..100)) {
            let mut map = http::HeaderMap::new();
            let mut expected = Headers::new();
            for (n, v) in &pairs {
                let Ok(value) = http::HeaderValue::from_bytes(v) else { continue };
                map.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), value);
            }
            for (n, v) in &map {
                expected.append_exact(n.as_str(), String::from_utf8_lossy(v.as_bytes()).as_ref());
            }
            let converted = Headers::from(&map);
            proptest::prop_assert_eq!(converted.load(), recount(&converted));
            proptest::prop_assert_eq!(converted, expected);
        }
    }

    #[test]
    fn copied_headers_share_one_buffer() {
        let headers = Headers::copy_from([("a", "1"), ("b", "22"), ("a", "333")]);
        let (name, values) = headers.entries().next().unwrap();
        let last = values.last().unwrap();
        // "a" "1" "b" "22" "a" "333": the last value starts 6 bytes after the first name.
        assert_eq!(last.as_ptr(), name.as_ptr().wrapping_add(6));
        assert!(headers.get("a").unwrap().eq(["1", "333"]));
    }
}
