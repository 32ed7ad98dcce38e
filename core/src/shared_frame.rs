//! Decoding that shares the frame: while an event is decoded inside [`decode_sharing`], the
//! strings and body bytes read from the payload become slices of it (a reference count, no copy)
//! instead of allocations of their own.
//!
//! serde gives a visitor no context, so the frame being decoded lives in a thread-local for the
//! duration of one synchronous [`decode_sharing`] call, as the header budget does
//! ([`crate::limits`]). A slice that does not lie inside the frame (an escaped JSON string, which
//! the decoder had to rewrite) is copied as before.

use std::cell::RefCell;

use bytes::Bytes;

thread_local! {
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `frame` as the bytes that decoded strings and bodies may share. Nested
/// calls each see their own frame; the outer one is restored afterwards, even on a panic.
pub(crate) fn decode_sharing<R>(frame: &Bytes, decode: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FRAME.with(|f| *f.borrow_mut() = self.0.take());
        }
    }
    let outer = FRAME.with(|f| f.borrow_mut().replace(frame.clone()));
    let _restore = Restore(outer);
    decode()
}

/// The frame being decoded, if any.
pub(crate) fn current() -> Option<Bytes> {
    FRAME.with(|f| f.borrow().clone())
}

/// `part` as a slice of the frame being decoded, if it lies inside it.
pub(crate) fn slice(part: &[u8]) -> Option<Bytes> {
    FRAME.with(|f| {
        let frame = f.borrow();
        let frame = frame.as_ref()?;
        let start = frame.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        let inside = at >= start && at + part.len() <= start + frame.len();
        inside.then(|| frame.slice_ref(part))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_only_inside_the_frame_and_only_inside_the_scope() {
        let frame = Bytes::from(b"hello world".to_vec());
        let other = b"hello".to_vec();
        assert!(slice(&frame[..5]).is_none());
        decode_sharing(&frame, || {
            let s = slice(&frame[6..]).unwrap();
            assert_eq!(&s[..], b"world");
            assert_eq!(s.as_ptr(), frame[6..].as_ptr());
            assert!(slice(&other).is_none());
            let inner = Bytes::from(b"inner".to_vec());
            decode_sharing(&inner, || assert!(slice(&frame[..5]).is_none()));
            assert!(slice(&frame[..5]).is_some());
        });
        assert!(slice(&frame[..5]).is_none());
    }
}
