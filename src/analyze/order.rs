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

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Moves `dst`'s rows and then every run's rows (emptied, without their
/// buffers) into `dst`, merged by `key` (stable: equal keys keep run order,
/// a run not sorted by it is sorted first). Returns whether the result is
/// sorted by `key`: always, but for `dst` alone (no run with rows), which
/// is returned as it was.
pub fn merge_sorted_runs<'a, T: 'a, K: Ord>(
    dst: &mut Vec<T>,
    runs: impl IntoIterator<Item = &'a mut Vec<T>>,
    key: impl Fn(&T) -> K,
) -> bool {
    let mut all: Vec<Vec<T>> = Vec::new();
    if !dst.is_empty() {
        all.push(std::mem::take(dst));
    }
    for r in runs {
        // Taken whole (an empty run keeps no buffer either).
        let r = std::mem::take(r);
        if !r.is_empty() {
            all.push(r);
        }
    }
    let (merged, sorted) = merge_into(all, key);
    *dst = merged;
    sorted
}

/// The merge itself (see [`merge_sorted_runs`]); `runs` holds only
/// non-empty runs.
fn merge_into<T, K: Ord>(mut runs: Vec<Vec<T>>, key: impl Fn(&T) -> K) -> (Vec<T>, bool) {
    let total: usize = runs.iter().map(Vec::len).sum();
    if runs.len() <= 1 {
        let only = runs.pop().unwrap_or_default();
        let sorted = only.is_sorted_by_key(&key);
        return (only, sorted);
    }
    let mut out = Vec::with_capacity(total);
    for r in runs.iter_mut() {
        if !r.is_sorted_by_key(&key) {
            // Sorted alone (stable), then merged: still the stable sort of
            // the concatenation (see the module's documentation).
            r.sort_by_key(&key);
        }
    }
    let mut iters: Vec<std::vec::IntoIter<T>> = runs.into_iter().map(Vec::into_iter).collect();
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
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merge equals the stable sort of the concatenation, on runs
    /// with equal keys across and within runs, empty runs, and unsorted
    /// runs (sorted alone, then merged).
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
        for (n, case) in cases.into_iter().enumerate() {
            let mut want: Vec<(u32, u32)> = case.iter().flatten().copied().collect();
            let all_sorted = case.iter().all(|r| r.is_sorted_by_key(|x| x.0));
            // One run with rows comes back as it was; more are merged.
            let alone = case.iter().filter(|r| !r.is_empty()).count() <= 1;
            if all_sorted || !alone {
                want.sort_by_key(|x| x.0);
            }
            let mut case = case;
            let (first, rest) = case
                .split_first_mut()
                .map_or((Vec::new(), &mut [][..]), |(f, r)| (f.clone(), r));
            let mut dst = first;
            let sorted = merge_sorted_runs(&mut dst, rest.iter_mut(), |x| x.0);
            assert_eq!(dst, want, "case {n}");
            assert_eq!(sorted, dst.is_sorted_by_key(|x| x.0), "case {n}");
            assert!(rest.iter().all(|r| r.capacity() == 0), "case {n}: runs keep no buffer");
        }
    }
}
