//! Stream types shared by the flow layer (which reassembles) and the framers
//! (which read what it delivers), on the ground floor so that neither
//! imports the other.

/// A piece of a reassembled byte stream, handed to the application framer in
/// stream order. `Gap(n)` says that `n` bytes of the stream were never seen
/// (lost in capture, or given up on when the out-of-order buffer was full);
/// the framer decides whether it can keep its framing across them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    Data(&'a [u8]),
    Gap(u64),
}
