//! Gathering what the shards produced in one step into frame order without
//! sorting it again.
//!
//! Each shard handles its packets in frame order, so most of what it pushes
//! during a step (KRPC rows, their peers, observations, swarm events) is
//! already ordered by frame: the step's output is a handful of sorted runs
//! (64 shards), which the stage then sorted by frame with a stable sort.
//! Concatenating them grew one vector shard by shard (a reallocation and a
//! copy of every row so far, each time) and the stable sort moved the wide
//! rows once per merge level. [`merge_sorted_runs`] moves each row once,
//! into a vector reserved for all of them.
//!
//! Why the result is the same: when every run is sorted by the key, the
//! stable sort of their concatenation puts equal keys in run order, then in
//! order within a run; the merge takes the smallest `(key, run index)` head
//! each time and so produces exactly that order. A run that is not sorted
//! (rows a flow's end pushes for an older frame, events a connection held
//! back until it settled) is first sorted alone with a stable sort: equal
//! keys keep their order within it, so the merge is still the stable sort
//! of the concatenation. Concatenating such runs instead left the whole
//! step to the caller's stable sort, which moved every ~150-byte swarm
//! event once per merge level of ~25 runs (bulk-1g: ~80 M instructions of
//! the stage's thread).
//!
//! Most steps need no comparisons at all: the keys are frame numbers of
//! one capture, and a step's frames are numbered consecutively, so a
//! counting sort by the key's offset from the step's smallest key (stable,
//! so the same order as the merge) gives each row its place; the rows are
//! then moved once, in that order.
//! With 64 shards whose rows interleave frame by frame, the heap took a pop
//! and a push per row (~400 instructions per KRPC row on dht-125k).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A merge key that also measures how far apart two keys are, when they
/// lie in one dense range (frame numbers of one capture): the merge then
/// places rows by counting instead of comparing heads in a heap.
pub trait DenseKey: Ord + Copy {
    /// `self - lo` when both are in one range and `lo <= self`, else `None`.
    /// Must agree with `Ord`: for keys of one range, a larger key has a
    /// larger offset.
    fn offset_from(self, lo: Self) -> Option<u64>;
}

impl DenseKey for u32 {
    fn offset_from(self, lo: Self) -> Option<u64> {
        self.checked_sub(lo).map(u64::from)
    }
}

impl DenseKey for u64 {
    fn offset_from(self, lo: Self) -> Option<u64> {
        self.checked_sub(lo)
    }
}

/// (capture, frame): dense within one capture.
impl DenseKey for (u32, u64) {
    fn offset_from(self, lo: Self) -> Option<u64> {
        if self.0 == lo.0 {
            self.1.checked_sub(lo.1)
        } else {
            None
        }
    }
}

/// Moves `dst`'s rows and then every run's rows into `dst`, merged by
/// `key` (stable: equal keys keep run order, a run not sorted by it is
/// sorted first). Returns whether the result is sorted by `key`: always,
/// but for one run with rows alone, which is returned as it was.
///
/// The runs are left empty. A lone run (nothing to merge) becomes `dst`
/// whole; runs that were merged keep their buffers for the next step
/// (see [`keep_room`]), so a shard does not regrow its vectors from empty
/// every step (dht-125k: ~0.44 k instructions a KRPC datagram of
/// reallocation and copying).
pub fn merge_sorted_runs<'a, T: 'a, K: DenseKey>(
    dst: &mut Vec<T>,
    runs: impl IntoIterator<Item = &'a mut Vec<T>>,
    key: impl Fn(&T) -> K,
) -> bool {
    let mut first = std::mem::take(dst);
    let mut all: Vec<&mut Vec<T>> = Vec::new();
    if !first.is_empty() {
        all.push(&mut first);
    }
    for r in runs {
        if !r.is_empty() {
            all.push(r);
        }
    }
    if all.len() <= 1 {
        // Moved whole: nothing is copied.
        let only = all.pop().map(std::mem::take).unwrap_or_default();
        let sorted = only.is_sorted_by_key(&key);
        *dst = only;
        return sorted;
    }
    let used: Vec<usize> = all.iter().map(|r| r.len()).collect();
    *dst = merge_into(&mut all, key);
    for (r, n) in all.into_iter().zip(used) {
        keep_room(r, n);
    }
    true
}

/// What an emptied run keeps of its buffer, having just held `used` rows:
/// at most about twice that, plus a little (a burst's buffer is given
/// back, so a shard keeps no more than about twice its last step's rows
/// between steps).
pub fn keep_room<T>(run: &mut Vec<T>, used: usize) {
    run.clear();
    run.shrink_to(used.saturating_mul(2).saturating_add(KEEP_SLACK));
}

/// Rows an emptied run keeps room for whatever its last step held.
const KEEP_SLACK: usize = 16;

/// Gives back the buffer of an emptied run whose room is more than
/// [`KEEP_BYTES`]: for the tables of bulk peer-wire traffic (a flow's
/// events and messages of one step: hundreds of ~150-byte rows), where
/// regrowing from empty takes a few doublings a step and keeping the room
/// between steps held ~3 MiB more at peak on bulk-1g (anonymous memory
/// 35.6 -> 38.9 MiB, x1.26 of bulk-250m's peak RSS against <= 1.25). The
/// DHT tables keep theirs (dht-125k: ~0.44 k instructions a KRPC datagram
/// of regrowth otherwise).
pub fn give_back_large<T>(run: &mut Vec<T>) {
    if run.is_empty() && run.capacity().saturating_mul(std::mem::size_of::<T>()) > KEEP_BYTES {
        *run = Vec::new();
    }
}

/// See [`give_back_large`].
pub(crate) const KEEP_BYTES: usize = 16 * 1024;

/// Keys spanning at most this many values per row (plus
/// [`DENSE_SLACK`]) are placed by counting: a step's frames are numbered
/// consecutively, so its rows' keys span about as many values as the step
/// has frames, and a table with rows for most frames (KRPC messages) stays
/// well inside. The counting array is 4 bytes per value of the span.
const DENSE_PER_ROW: u64 = 8;
const DENSE_SLACK: u64 = 4096;

/// The merge itself (see [`merge_sorted_runs`]): at least two runs,
/// each with rows; they are left empty, with their buffers.
fn merge_into<T, K: DenseKey>(runs: &mut [&mut Vec<T>], key: impl Fn(&T) -> K) -> Vec<T> {
    let total: usize = runs.iter().map(|r| r.len()).sum();
    for r in runs.iter_mut() {
        if !r.is_sorted_by_key(&key) {
            // Sorted alone (stable), then merged: still the stable sort of
            // the concatenation (see the module's documentation).
            r.sort_by_key(&key);
        }
    }
    if let Some(order) = dense_order(runs, total, &key) {
        return take_in_order(runs, &order, total);
    }
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<std::vec::Drain<'_, T>> = runs.iter_mut().map(|r| r.drain(..)).collect();
    let mut heap: BinaryHeap<Reverse<(K, usize)>> = BinaryHeap::with_capacity(iters.len());
    for (i, it) in iters.iter().enumerate() {
        if let Some(h) = it.as_slice().first() {
            heap.push(Reverse((key(h), i)));
        }
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        let Some(it) = iters.get_mut(i) else { continue };
        // Take from run `i` while its head still comes before every other
        // run's head (ties go to the lower run index, as a stable sort).
        loop {
            if let Some(v) = it.next() {
                out.push(v);
            }
            let Some(h) = it.as_slice().first() else { break };
            let next = (key(h), i);
            match heap.peek() {
                Some(Reverse(top)) if *top < next => {
                    heap.push(Reverse(next));
                    break;
                }
                _ => {}
            }
        }
    }
    out
}

/// The run each row of the merge comes from, one entry per row, when
/// every run is sorted and every key lies in one dense range (see
/// [`DENSE_PER_ROW`]): a counting sort by the key's offset, which is
/// stable (equal keys in run order, then in order within a run), like the
/// merge it replaces. `None` otherwise: the caller merges by comparing.
fn dense_order<T, K: DenseKey, R: AsRef<[T]>>(runs: &[R], total: usize, key: &impl Fn(&T) -> K) -> Option<Vec<u32>> {
    // The range from the runs' ends (each run's first and last key, were it
    // sorted); the count pass below checks that it is.
    let mut ends = runs
        .iter()
        .filter_map(|r| Some((key(r.as_ref().first()?), key(r.as_ref().last()?))));
    let (mut lo, mut hi) = ends.next()?;
    for (f, l) in ends {
        lo = lo.min(f);
        hi = hi.max(l);
    }
    let span = hi.offset_from(lo)?;
    let bound = (total as u64).saturating_mul(DENSE_PER_ROW).saturating_add(DENSE_SLACK);
    if span > bound || u32::try_from(runs.len()).is_err() || u32::try_from(total).is_err() {
        return None;
    }
    // Rows per key offset (each run checked sorted on the way: then every
    // key lies in [lo, hi]), then each offset's first place in the output.
    let mut next = vec![0u32; span as usize + 2];
    for run in runs {
        let mut prev = 0;
        for r in run.as_ref() {
            let off = key(r).offset_from(lo)?;
            if off < prev || off > span {
                return None;
            }
            prev = off;
            *next.get_mut(off as usize + 1)? += 1;
        }
    }
    let mut sum = 0u32;
    for n in next.iter_mut() {
        sum += *n;
        *n = sum;
    }
    let mut order = vec![0u32; total];
    for (i, run) in runs.iter().enumerate() {
        for r in run.as_ref() {
            let place = next.get_mut(usize::try_from(key(r).offset_from(lo)?).ok()?)?;
            *order.get_mut(*place as usize)? = i as u32;
            *place += 1;
        }
    }
    Some(order)
}

/// Moves the rows out of `runs` in `order` (a run index per row: the n-th
/// time run `i` appears, its n-th row is taken), each row moved once.
fn take_in_order<T>(runs: &mut [&mut Vec<T>], order: &[u32], total: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<std::vec::Drain<'_, T>> = runs.iter_mut().map(|r| r.drain(..)).collect();
    for &i in order {
        if let Some(v) = iters.get_mut(i as usize).and_then(|it| it.next()) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_emptied_buffers_are_given_back_small_ones_kept() {
        let mut large: Vec<u64> = Vec::with_capacity(KEEP_BYTES / 8 + 1);
        give_back_large(&mut large);
        assert_eq!(large.capacity(), 0, "an emptied buffer over KEEP_BYTES is given back");
        let mut small: Vec<u64> = Vec::with_capacity(KEEP_BYTES / 8);
        give_back_large(&mut small);
        assert!(small.capacity() >= KEEP_BYTES / 8, "one at KEEP_BYTES is kept");
        let mut full: Vec<u64> = vec![7; KEEP_BYTES];
        give_back_large(&mut full);
        assert_eq!(full.len(), KEEP_BYTES, "a buffer with rows is left alone");
    }

    /// The merge equals the stable sort of the concatenation, on runs
    /// with equal keys across and within runs, empty runs, and unsorted
    /// runs (sorted alone, then merged), each with keys in one dense range
    /// (placed by counting) and with keys far apart (merged by comparing).
    #[test]
    fn merged_runs_equal_the_stable_sort_of_their_concatenation() {
        // (key, tag): the tag tells equal keys apart.
        let cases: Vec<Vec<Vec<(u32, u32)>>> = vec![
            vec![
                vec![(1, 0), (3, 1), (3, 2), (7, 3)],
                vec![],
                vec![(0, 4), (3, 5), (9, 6)],
                vec![(3, 7)],
            ],
            vec![vec![], vec![(5, 0)], vec![]],
            vec![vec![(2, 0), (2, 1)], vec![(2, 2)], vec![(1, 3), (2, 4), (2, 5)]],
            vec![vec![(4, 0), (1, 1)], vec![(0, 2)]],
            vec![],
        ];
        let mut seed = 7u32;
        let mut random = Vec::new();
        for _ in 0..64 {
            let mut run: Vec<(u32, u32)> = (0..(seed % 9))
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    ((seed >> 16) % 20, 0)
                })
                .collect();
            run.sort_by_key(|r| r.0);
            random.push(run);
        }
        // The same with every third run left unsorted (equal keys within
        // and across runs).
        let mut unsorted = random.clone();
        for (i, run) in unsorted.iter_mut().enumerate() {
            if i % 3 == 0 {
                run.reverse();
            }
        }
        for (tag, r) in random.iter_mut().flatten().enumerate() {
            r.1 = tag as u32;
        }
        for (tag, r) in unsorted.iter_mut().flatten().enumerate() {
            r.1 = tag as u32;
        }
        assert!(!unsorted.iter().all(|r| r.is_sorted_by_key(|x| x.0)));
        let mut cases = cases;
        cases.push(random);
        cases.push(unsorted);
        cases.push(vec![vec![(4, 0), (1, 1)]]);
        // The same shapes with keys far apart: merged by comparing (the
        // counting sort's array would be too large).
        let sparse: Vec<Vec<Vec<(u32, u32)>>> = cases
            .iter()
            .map(|c| {
                c.iter()
                    .map(|r| r.iter().map(|&(k, t)| (k * 1_000_000, t)).collect())
                    .collect()
            })
            .collect();
        cases.extend(sparse);
        for (n, case) in cases.into_iter().enumerate() {
            let concat: Vec<(u32, u32)> = case.iter().flatten().copied().collect();
            let mut stable = concat.clone();
            stable.sort_by_key(|x| x.0);
            let all_sorted = case.iter().all(|r| r.is_sorted_by_key(|x| x.0));
            let nonempty: Vec<Vec<(u32, u32)>> = case.iter().filter(|r| !r.is_empty()).cloned().collect();
            let span = concat.iter().map(|x| x.0).max().unwrap_or(0) - concat.iter().map(|x| x.0).min().unwrap_or(0);
            assert_eq!(
                dense_order(&nonempty, concat.len(), &|x: &(u32, u32)| x.0).is_some(),
                all_sorted && !nonempty.is_empty() && span < 1_000_000,
                "case {n}: counted when sorted and dense"
            );
            let mut case = case;
            let case_lens: Vec<usize> = case.iter().map(Vec::len).collect();
            let (first, rest) = case
                .split_first_mut()
                .map_or((Vec::new(), &mut [][..]), |(f, r)| (f.clone(), r));
            let mut dst = first;
            let sorted = merge_sorted_runs(&mut dst, rest.iter_mut(), |x| x.0);
            // One run with rows comes back as it was; more are merged into
            // the stable sort's order.
            let alone = nonempty.len() <= 1;
            let want = if all_sorted || !alone { &stable } else { &concat };
            assert_eq!(&dst, want, "case {n}");
            assert_eq!(sorted, dst.is_sorted_by_key(|x| x.0), "case {n}");
            assert_eq!(sorted, all_sorted || !alone, "case {n}");
            assert!(rest.iter().all(|r| r.is_empty()), "case {n}: runs emptied");
            // A merged run keeps room for about twice what it held; a lone
            // run becomes `dst` whole.
            for (r, held) in rest.iter().zip(case_lens.iter().skip(1)) {
                assert!(r.capacity() <= 2 * held + 16, "case {n}: a run keeps at most its room");
                if alone {
                    assert_eq!(r.capacity(), 0, "case {n}: a lone run is moved");
                } else {
                    assert!(r.capacity() >= *held, "case {n}: a merged run keeps its buffer");
                }
            }
        }
    }
}
