//! HTTP headers as the protocol carries them: an object mapping each name to an array of values.
//!
//! [`Headers`] keeps its names and values as spans of text rather than as a string object each:
//! spans of one shared buffer (the frame the headers were decoded from, or the buffer
//! [`Headers::copy_from`] filled), or of a buffer of the headers' own (text appended by hand,
//! escaped text a decoder had to rewrite). The entries themselves are plain data, one per name in
//! arrival order with its first value inline; a name's further values are chained in a second
//! list. So decoding or copying a request's headers costs one list and one reference to their
//! text however many headers there are, cloning them costs the same, and dropping them frees
//! one list.
//!
//! Building headers from the wire (decoding, [`Headers::append_exact`]) merges repeated names
//! in time linear in the number of headers, however many distinct names a peer sends: past
//! [`INDEXED_FROM`] names an exact-name hash index takes over from the linear scan. Decoding
//! counts every value against the [`HeaderLimits`](crate::limits::HeaderLimits) of the message.
//!
//! Text replaced or removed by [`Headers::insert`] and [`Headers::remove`] is reclaimed once it
//! is more than half of the own buffer, so a long-lived header set that is changed again and
//! again stays within twice its live size.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::iter::FusedIterator;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::byte_str::ByteStr;

/// Where a name or value lies: in the shared text, or (`own`) in the headers' own buffer.
/// Always whole UTF-8 text: checked, or copied from a `str`, when the span was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
    own: bool,
}

impl Span {
    /// `text[range]` as a span of the shared text, if it is UTF-8 (and within 4 GiB, as every
    /// frame is).
    #[inline(always)]
    pub(crate) fn checked(text: &[u8], range: Range<usize>) -> Option<Self> {
        if !crate::byte_str::is_utf8(text.get(range.clone())?) {
            return None;
        }
        Self::of_utf8(range)
    }

    /// A span of the shared text, whose UTF-8 the caller has made sure of.
    #[inline]
    pub(crate) fn of_utf8(range: Range<usize>) -> Option<Self> {
        Some(Self {
            start: u32::try_from(range.start).ok()?,
            len: u32::try_from(range.len()).ok()?,
            own: false,
        })
    }

    #[inline]
    pub(crate) fn len(self) -> usize {
        self.len as usize
    }

    #[inline]
    fn range(self) -> Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// No further value.
const NONE: u32 = u32::MAX;

/// One name and its values: the first inline, the rest chained through [`Headers::more`].
#[derive(Clone, Copy, Debug)]
struct Entry {
    name: Span,
    /// How many values (an array may be empty on the wire).
    count: u32,
    first: Span,
    /// The second value's link, or [`NONE`].
    more: u32,
    /// The last value's link, where the next value is chained ([`NONE`] with fewer than two).
    last: u32,
}

/// A value after a name's first, and the link to the next.
#[derive(Clone, Copy, Debug)]
struct Link {
    value: Span,
    next: u32,
}

/// Past this many distinct names, exact-name lookups while building headers go through a hash
/// index rather than a scan, so that merging stays linear in the input.
pub const INDEXED_FROM: usize = 64;

/// An ordered multi-map of HTTP headers.
///
/// Holds at most 4 GiB of text of its own (appended by hand); beyond that, adding text panics.
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
/// let flat: Vec<_> = headers.into_flat().collect();
/// assert_eq!(flat.len(), 3);
/// ```
#[derive(Clone, Default)]
pub struct Headers {
    /// The shared text that spans not marked `own` lie in.
    text: Bytes,
    /// Text of the headers' own: appended by hand, or rewritten by a decoder (which may lend
    /// it room in the payload's allocation, see [`ExactBuilder::lend_room`]).
    own: BytesMut,
    entries: Vec<Entry>,
    more: Vec<Link>,
    /// Exact name -> position, kept while names are appended by exact match and there are more
    /// than [`INDEXED_FROM`] of them; dropped by any other change (rebuilt when needed).
    index: Option<Box<NameIndex>>,
    /// Values held, and bytes of names (once per entry) and values: kept as headers change, so
    /// [`Headers::load`] is free however many headers there are.
    values: usize,
    bytes: usize,
    /// Bytes of `own` and links of `more` no longer referred to.
    dead_own: usize,
    dead_links: usize,
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
    headers: &'a Headers,
    /// The first value, until it is taken.
    first: Option<Span>,
    next: u32,
    left: usize,
}

impl<'a> Iterator for HeaderValues<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let span = match self.first.take() {
            Some(first) => first,
            None => {
                let link = *self.headers.more.get(self.next as usize)?;
                self.next = link.next;
                link.value
            }
        };
        self.left -= 1;
        Some(self.headers.str(span))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
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
    headers: &'a Headers,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for HeaderEntries<'a> {
    type Item = (&'a str, HeaderValues<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?;
        Some((self.headers.str(entry.name), self.headers.values_of(entry)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for HeaderEntries<'_> {}
impl FusedIterator for HeaderEntries<'_> {}

/// [`Headers::into_flat`]: each entry's name with each of its values, in order.
struct IntoFlat {
    text: Bytes,
    own: Bytes,
    entries: std::vec::IntoIter<Entry>,
    more: Vec<Link>,
    /// The entry being walked: its name, its first value until taken, its next link.
    name: Option<ByteStr>,
    first: Option<Span>,
    next: u32,
}

impl IntoFlat {
    fn shared(&self, span: Span) -> ByteStr {
        let source = if span.own { &self.own } else { &self.text };
        ByteStr::from_utf8_slice(source, span.range())
    }
}

impl Iterator for IntoFlat {
    type Item = (ByteStr, ByteStr);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(name) = &self.name {
                let value = match self.first.take() {
                    Some(first) => Some(first),
                    None => self.more.get(self.next as usize).map(|link| {
                        self.next = link.next;
                        link.value
                    }),
                };
                if let Some(value) = value {
                    return Some((name.clone(), self.shared(value)));
                }
            }
            let entry = self.entries.next()?;
            self.name = Some(self.shared(entry.name));
            self.first = (entry.count > 0).then_some(entry.first);
            self.next = entry.more;
        }
    }
}

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

    /// Adds a value, after any existing values of the same name (case-insensitive).
    pub fn append(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.index = None;
        let found = self.position(name);
        self.add_copy(found, name, value);
    }

    /// Adds a value after any existing values of exactly `name` (case-sensitive). Transports
    /// that carry headers as a flat list of `(name, value)` pairs (gRPC) rebuild [`Headers`]
    /// with it, so names that differ only in case stay apart as the sender wrote them and
    /// `into_flat` followed by `append_exact` gives back the same headers.
    ///
    /// ```
    /// use agent_protocol_core::Headers;
    /// let mut h = Headers::new();
    /// for (n, v) in [("a", "1"), ("A", "2"), ("a", "3")] {
    ///     h.append_exact(n, v);
    /// }
    /// assert_eq!(h.len(), 2);
    /// assert!(h.entries().next().unwrap().1.eq(["1", "3"]));
    /// ```
    pub fn append_exact(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.prepare_index();
        let found = self.exact_position(name);
        self.add_copy(found, name, value);
    }

    /// Replaces every value of `name` (case-insensitive) with one value.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.index = None;
        let found = self.position(name);
        if let Some(at) = found {
            self.forget_values(at);
        }
        self.add_copy(found, name, value);
        self.reclaim();
    }

    /// Removes a name (case-insensitive) and returns its values.
    pub fn remove(&mut self, name: &str) -> Option<Vec<ByteStr>> {
        let at = self.position(name)?;
        self.index = None;
        let removed = self
            .values_of(&self.entries[at])
            .map(ByteStr::from)
            .collect();
        self.forget_values(at);
        let entry = self.entries.remove(at);
        self.forget(entry.name);
        self.reclaim();
        Some(removed)
    }

    /// The values of `name` (case-insensitive), in order.
    pub fn get(&self, name: &str) -> Option<HeaderValues<'_>> {
        self.position(name)
            .map(|at| self.values_of(&self.entries[at]))
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|mut v| v.next())
    }

    /// Each name with its values, in order.
    pub fn entries(&self) -> HeaderEntries<'_> {
        HeaderEntries {
            headers: self,
            entries: self.entries.iter(),
        }
    }

    /// Iterates `(name, value)` pairs without allocating.
    pub fn iter_flat(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries()
            .flat_map(|(name, values)| values.map(move |v| (name, v)))
    }

    /// Consumes the headers into `(name, value)` pairs, each string sharing the headers' text
    /// (their own text becomes a shared buffer too): nothing is copied.
    pub fn into_flat(self) -> impl Iterator<Item = (ByteStr, ByteStr)> {
        IntoFlat {
            own: self.own.freeze(),
            text: self.text,
            entries: self.entries.into_iter(),
            more: self.more,
            name: None,
            first: None,
            next: NONE,
        }
    }

    /// The text of `span`.
    #[inline]
    fn str(&self, span: Span) -> &str {
        let source: &[u8] = if span.own { &self.own } else { &self.text };
        let bytes = &source[span.range()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: a span is made only over whole UTF-8 text (`Span::checked` checks it; the
        // others are given `str`s), and neither buffer's text changes under a span.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(bytes)
        }
    }

    fn values_of(&self, entry: &Entry) -> HeaderValues<'_> {
        HeaderValues {
            headers: self,
            first: (entry.count > 0).then_some(entry.first),
            next: entry.more,
            left: entry.count as usize,
        }
    }

    /// Adds a copy of `value` to the entry at `found`, or to a new entry for a copy of `name`.
    fn add_copy(&mut self, found: Option<usize>, name: &str, value: &str) {
        let at = match found {
            Some(at) => at,
            None => {
                let name = self.own_copy(name);
                self.new_entry(name)
            }
        };
        let value = self.own_copy(value);
        self.push_value(at, value);
    }

    /// A copy of `text` in the own buffer.
    fn own_copy(&mut self, text: &str) -> Span {
        let start = self.own.len();
        self.own.extend_from_slice(text.as_bytes());
        own_span(start, text.len())
    }

    /// Adds an entry for `name` with no value yet, counting the name; returns its position.
    #[inline(always)]
    fn new_entry(&mut self, name: Span) -> usize {
        self.bytes += name.len();
        let at = self.entries.len();
        if let Some(index) = &mut self.index {
            let source: &[u8] = if name.own { &self.own } else { &self.text };
            let h = index.hasher.hash_one(&source[name.range()]);
            index.positions.entry(h).or_insert(at);
        }
        self.entries.push(Entry {
            name,
            count: 0,
            first: name,
            more: NONE,
            last: NONE,
        });
        at
    }

    /// Adds `value` after the values of the entry at `at`, counting it.
    #[inline(always)]
    fn push_value(&mut self, at: usize, value: Span) {
        self.values += 1;
        self.bytes += value.len();
        let entry = &mut self.entries[at];
        if entry.count == 0 {
            entry.first = value;
        } else {
            let link = u32::try_from(self.more.len()).expect("headers hold under 4G values");
            self.more.push(Link { value, next: NONE });
            match entry.last {
                NONE => entry.more = link,
                last => self.more[last as usize].next = link,
            }
            entry.last = link;
        }
        entry.count += 1;
    }

    /// Uncounts the values of the entry at `at` and leaves it with none.
    fn forget_values(&mut self, at: usize) {
        let entry = self.entries[at];
        if entry.count > 0 {
            self.values -= 1;
            self.forget(entry.first);
        }
        let mut next = entry.more;
        while let Some(link) = self.more.get(next as usize).copied() {
            self.values -= 1;
            self.dead_links += 1;
            self.forget(link.value);
            next = link.next;
        }
        let entry = &mut self.entries[at];
        entry.count = 0;
        entry.more = NONE;
        entry.last = NONE;
    }

    /// Uncounts text no longer held.
    fn forget(&mut self, span: Span) {
        self.bytes -= span.len();
        if span.own {
            self.dead_own += span.len();
        }
    }

    /// Rewrites the own buffer and the value links without what is no longer held, once that
    /// is more than half of either.
    fn reclaim(&mut self) {
        let own_waste = self.dead_own > 64 && self.dead_own * 2 > self.own.len();
        let link_waste = self.dead_links > 8 && self.dead_links * 2 > self.more.len();
        if !own_waste && !link_waste {
            return;
        }
        let mut own = BytesMut::with_capacity(self.own.len() - self.dead_own);
        let mut more = Vec::with_capacity(self.more.len() - self.dead_links);
        let mut keep = |span: Span| {
            if !span.own {
                return span;
            }
            let start = own.len();
            own.extend_from_slice(&self.own[span.range()]);
            own_span(start, span.len())
        };
        for entry in &mut self.entries {
            entry.name = keep(entry.name);
            if entry.count > 0 {
                entry.first = keep(entry.first);
            }
            let mut next = entry.more;
            let mut previous = NONE;
            while let Some(link) = self.more.get(next as usize).copied() {
                let at = more.len() as u32;
                more.push(Link {
                    value: keep(link.value),
                    next: NONE,
                });
                match previous {
                    NONE => entry.more = at,
                    p => more[p as usize].next = at,
                }
                previous = at;
                next = link.next;
            }
            entry.last = previous;
        }
        self.own = own;
        self.more = more;
        self.dead_own = 0;
        self.dead_links = 0;
    }

    /// The position of `name`, compared case-insensitively.
    fn position(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| self.str(e.name).eq_ignore_ascii_case(name))
    }

    /// The position of exactly `name`. Amortised constant time per call, whatever the number
    /// of names: repeated names usually arrive together, so the last entry is looked at first;
    /// past [`INDEXED_FROM`] names the rest go through the index (see [`Self::prepare_index`]).
    fn exact_position(&self, name: &str) -> Option<usize> {
        let last = self.entries.len().checked_sub(1)?;
        if self.str(self.entries[last].name) == name {
            return Some(last);
        }
        let Some(index) = &self.index else {
            return self.entries.iter().position(|e| self.str(e.name) == name);
        };
        let &i = index
            .positions
            .get(&index.hasher.hash_one(name.as_bytes()))?;
        if self.str(self.entries[i].name) == name {
            Some(i)
        } else {
            // Two names with one 64-bit keyed hash: practically never; stay correct anyway.
            self.entries.iter().position(|e| self.str(e.name) == name)
        }
    }

    /// Builds the exact-name index, if there are more than [`INDEXED_FROM`] names and it is
    /// not there; called before [`Self::exact_position`].
    fn prepare_index(&mut self) {
        if self.entries.len() <= INDEXED_FROM || self.index.is_some() {
            return;
        }
        let mut index = Box::new(NameIndex {
            hasher: RandomState::new(),
            positions: HashMap::with_capacity(self.entries.len() * 2),
        });
        for (i, e) in self.entries.iter().enumerate() {
            let h = index.hasher.hash_one(self.str(e.name).as_bytes());
            index.positions.entry(h).or_insert(i);
        }
        self.index = Some(index);
    }
}

fn own_span(start: usize, len: usize) -> Span {
    let fits = |n: usize| u32::try_from(n).expect("headers hold under 4 GiB of their own text");
    fits(start + len);
    Span {
        start: fits(start),
        len: fits(len),
        own: true,
    }
}

/// Builds headers from empty by exact name, as decoding and copying do, over one shared text
/// that names and values are spans of (or, rewritten, of the headers' own buffer).
///
/// A name is given with [`name`](Self::name), then its values with [`value`](Self::value).
/// Merging a repeated name means looking for an earlier entry of it, a scan of every entry so
/// far: quadratic in the names of a request, most of the decoding work of its headers. Nearly
/// every name is new, and a 128-bit filter of the names seen so far (by length, first and last
/// two bytes) says so without the scan; only a name the filter has seen is looked for. Names
/// chosen to collide in the filter only cost the scan, which stays linear in the input (past
/// [`INDEXED_FROM`] names it goes through the index).
pub(crate) struct ExactBuilder {
    headers: Headers,
    seen: u128,
    /// The entry values go to.
    current: usize,
}

impl ExactBuilder {
    /// Headers whose shared spans lie in `text`, with room for `names` names.
    pub(crate) fn over(text: Bytes, names: usize) -> Self {
        let mut headers = Headers::with_capacity(names);
        headers.text = text;
        Self {
            headers,
            seen: 0,
            current: 0,
        }
    }

    /// Text written into the own buffer by `write` (whole UTF-8 strings), as a span; `None` if
    /// `write` gives up (what it wrote is dropped).
    pub(crate) fn own(&mut self, write: impl FnOnce(&mut BytesMut) -> Option<()>) -> Option<Span> {
        let own = &mut self.headers.own;
        let start = own.len();
        if write(own).is_none() {
            own.truncate(start);
            return None;
        }
        Some(own_span(start, own.len() - start))
    }

    /// Lends the own buffer `room` (empty, with capacity): a decoder that rewrites text gives
    /// the room after its payload copy, so that text shares the payload's allocation.
    /// Spans already made into the own buffer must stay valid, so room is taken only while the
    /// buffer is empty (as it is when a decoder starts the headers); otherwise it goes unused.
    pub(crate) fn lend_room(&mut self, mut room: BytesMut) {
        if self.headers.own.is_empty() {
            room.clear();
            self.headers.own = room;
        }
    }

    /// Gives back the own buffer's room not used so far (for the decoder's other text).
    pub(crate) fn spare_room(&mut self) -> BytesMut {
        let used = self.headers.own.len();
        self.headers.own.split_off(used)
    }

    /// `text` as a span: of the shared text if it lies inside it (a slice of the frame being
    /// decoded), else a copy in the own buffer.
    fn text_of(&mut self, text: &str) -> Span {
        let shared = &self.headers.text;
        let start = (text.as_ptr() as usize).wrapping_sub(shared.as_ptr() as usize);
        if start <= shared.len() && text.len() <= shared.len() - start {
            if let Some(span) = Span::of_utf8(start..start + text.len()) {
                return span;
            }
        }
        self.headers.own_copy(text)
    }

    /// Starts a name: the values that follow go after any earlier values of exactly `name`.
    #[inline(always)]
    pub(crate) fn name(&mut self, name: Span) {
        let headers = &mut self.headers;
        let bit = 1u128 << filter_slot(headers.str(name).as_bytes());
        let seen = self.seen & bit != 0;
        self.seen |= bit;
        let found = if seen {
            headers.prepare_index();
            headers.exact_position(headers.str(name))
        } else {
            None
        };
        // A repeated name is held once, as first written.
        self.current = found.unwrap_or_else(|| headers.new_entry(name));
    }

    /// Adds a value to the current name.
    #[inline(always)]
    pub(crate) fn value(&mut self, value: Span) {
        self.headers.push_value(self.current, value);
    }

    pub(crate) fn finish(self) -> Headers {
        self.headers
    }
}

/// Which of the filter's 128 bits stands for `name`.
#[inline]
fn filter_slot(name: &[u8]) -> u32 {
    let byte = |at: Option<usize>| u32::from(at.and_then(|i| name.get(i)).copied().unwrap_or(0));
    let n = name.len();
    // The last two bytes tell apart names of one family and length (sec-fetch-site/-mode).
    let mixed = (n as u32)
        ^ (byte(Some(0)) << 8)
        ^ (byte(n.checked_sub(1)) << 16)
        ^ (byte(n.checked_sub(2)) << 24);
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
    /// two allocations however many there are; cloning them costs the same two. Values of the
    /// same name (exactly as written) are kept together in order.
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
    /// name and value a span of it.
    fn copy_text<'a>(
        pairs: impl Iterator<Item = (&'a str, Cow<'a, str>)>,
        text_len: usize,
    ) -> Self {
        // Lengths of each name and value in order; inline for up to 32 headers.
        let mut lengths: smallvec::SmallVec<[usize; 64]> = smallvec::SmallVec::new();
        let mut text = BytesMut::with_capacity(text_len);
        for (name, value) in pairs {
            for part in [name, &value] {
                text.extend_from_slice(part.as_bytes());
                lengths.push(part.len());
            }
        }
        // Filled exactly to its capacity, the buffer freezes into a `Bytes` without a reference
        // count of its own; none is allocated unless the headers are cloned.
        let mut headers = ExactBuilder::over(text.freeze(), lengths.len() / 2);
        let mut at = 0;
        let mut next = |headers: &mut ExactBuilder, len: usize| {
            let range = at..at + len;
            at = range.end;
            Span::of_utf8(range.clone()).unwrap_or_else(|| {
                // Past 4 GiB of text (never, for real headers): a copy of its own. The range
                // holds a whole `str` copied above, so this never fails.
                let shared = headers.headers.text.clone();
                let part = std::str::from_utf8(&shared[range]).unwrap_or_default();
                headers.headers.own_copy(part)
            })
        };
        for pair in lengths.chunks_exact(2) {
            let name = next(&mut headers, pair[0]);
            let value = next(&mut headers, pair[1]);
            headers.name(name);
            headers.value(value);
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

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
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

/// The general decoder's way in: names and values the decoder read straight out of the frame
/// being decoded (see `crate::shared_frame`) become spans of it; rewritten ones (escaped JSON)
/// are copied into the headers' own buffer.
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
        let frame = crate::shared_frame::current().unwrap_or_default();
        let mut headers = ExactBuilder::over(frame, names);
        while let Some(name) = map.next_key_seed(TextSeed(&mut headers))? {
            charge(0, name.len())?;
            headers.name(name);
            map.next_value_seed(ValuesSeed(&mut headers))?;
        }
        Ok(headers.finish())
    }
}

/// Counts header values and bytes against the limits of the message being decoded.
fn charge<E: serde::de::Error>(values: usize, bytes: usize) -> Result<(), E> {
    crate::limits::charge(values, bytes).map_err(E::custom)
}

/// One string of the headers, as a span.
struct TextSeed<'b>(&'b mut ExactBuilder);

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = Span;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Span, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = Span;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Span, E> {
        Ok(self.0.text_of(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Span, E> {
        Ok(self.0.headers.own_copy(v))
    }
}

/// A name's values: an array of strings, or (leniently) a single string; each charged to the
/// limits and added to the current name.
struct ValuesSeed<'b>(&'b mut ExactBuilder);

impl ValuesSeed<'_> {
    fn add<E: serde::de::Error>(&mut self, value: Span) -> Result<(), E> {
        charge(1, value.len())?;
        self.0.value(value);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of header values")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(value) = seq.next_element_seed(TextSeed(self.0))? {
            self.add(value)?;
        }
        Ok(())
    }

    fn visit_borrowed_str<E: serde::de::Error>(mut self, v: &'de str) -> Result<(), E> {
        let value = self.0.text_of(v);
        self.add(value)
    }

    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        let value = self.0.headers.own_copy(v);
        self.add(value)
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

    /// What the headers should hold: names in order, each with its values.
    type Model = Vec<(String, Vec<String>)>;

    fn model_of(h: &Headers) -> Model {
        h.entries()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string).collect()))
            .collect()
    }

    proptest::proptest! {
        /// Every change does what a plain list of names and values does, and the kept load
        /// always equals a recount, whatever sequence of changes made the headers (past the
        /// index threshold, and through the reclaiming of replaced text, too).
        #[test]
        fn changes_match_a_plain_model(ops in proptest::collection::vec((0u8..4, 0u8..80, "[a-c]{0,12}", proptest::bool::ANY), 0..300)) {
            let mut h = Headers::new();
            let mut model = Model::new();
            for (op, name, value, upper) in ops {
                let name = if upper { format!("N{name}") } else { format!("n{name}") };
                let folded = model.iter().position(|(n, _)| n.eq_ignore_ascii_case(&name));
                let exact = model.iter().position(|(n, _)| *n == name);
                match op {
                    0 => {
                        h.append(&name, &value);
                        match folded {
                            Some(i) => model[i].1.push(value),
                            None => model.push((name, vec![value])),
                        }
                    }
                    1 => {
                        h.append_exact(&name, &value);
                        match exact {
                            Some(i) => model[i].1.push(value),
                            None => model.push((name, vec![value])),
                        }
                    }
                    2 => {
                        h.insert(&name, &value);
                        match folded {
                            Some(i) => model[i].1 = vec![value],
                            None => model.push((name, vec![value])),
                        }
                    }
                    _ => {
                        let removed = h.remove(&name);
                        let expected = folded.map(|i| model.remove(i).1);
                        let removed = removed.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
                        proptest::prop_assert_eq!(removed, expected);
                    }
                }
                proptest::prop_assert_eq!(model_of(&h), model.clone());
                proptest::prop_assert_eq!(h.load(), recount(&h));
                proptest::prop_assert_eq!(h.clone(), h.clone().into_flat().fold(Headers::new(), |mut copy, (n, v)| {
                    copy.append_exact(n, v);
                    copy
                }));
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

    /// Text replaced again and again is reclaimed: the own buffer stays near its live size.
    #[test]
    fn replaced_text_is_reclaimed() {
        let mut h = Headers::new();
        h.append("keep", "k");
        for i in 0..10_000 {
            h.insert("x-counter", format!("value-{i}"));
            h.append("x-counter", "second");
            if i % 3 == 1 {
                h.remove("x-counter");
            }
        }
        assert!(h.own.len() < 256, "own text {} bytes", h.own.len());
        assert!(h.more.len() < 32, "{} links", h.more.len());
        assert_eq!(h.first("keep"), Some("k"));
        assert!(h.get("x-counter").unwrap().eq(["value-9999", "second"]));
    }

    /// Room lent after text was already written is refused: the text (and its span) stays.
    #[test]
    fn room_is_taken_only_into_an_empty_own_buffer() {
        let mut builder = ExactBuilder::over(Bytes::new(), 1);
        let name = builder.own(|own| {
            own.extend_from_slice(b"x-escaped");
            Some(())
        });
        builder.name(name.unwrap());
        builder.lend_room(BytesMut::from(&b"garbage!!"[..]));
        let headers = builder.finish();
        assert_eq!(headers.entries().next().unwrap().0, "x-escaped");

        let mut builder = ExactBuilder::over(Bytes::new(), 1);
        builder.lend_room(BytesMut::from(&b"old text"[..]));
        let value = builder.own(|own| {
            own.extend_from_slice(b"v");
            Some(())
        });
        builder.name(value.unwrap());
        assert_eq!(
            builder.finish().own.as_ref(),
            b"v",
            "lent room starts empty"
        );
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
