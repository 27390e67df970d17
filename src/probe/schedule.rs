//! When to visit a peer next, and whether to keep a contact open: the probe
//! aims its next visit just after the moment the peer's piece count is
//! expected to reach the completion threshold, so the crossing of a
//! confirmed download is seen when it happens rather than up to a whole
//! revisit interval later (BTDA revisited on a fixed 5-minute timer).
//!
//! The download rate comes from the peer's observations: the piece counts
//! of earlier visits, the `have`s heard during contacts, and the count at
//! the end of each contact (so a silence lowers the rate). A peer whose
//! count does not move, or whose rate is not known yet, is revisited after
//! the longest interval (`--revisit`): on a swarm that does not move the
//! probe visits no more often than with fixed revisits. A moving peer is
//! revisited just after its predicted crossing, never sooner than
//! `--min-revisit` nor later than `--revisit`. A contact with a peer
//! expected to cross before the contact's cap (`--max-contact`) is held
//! open through silences longer than the idle timeout, so its crossing
//! `have` is heard.

use std::time::Duration;

/// Observations kept per peer: enough to span the rate window with a few
/// contacts (each adds its progress points and its end).
pub const MAX_OBS: usize = 32;

/// Time added after a predicted crossing before the next visit: a visit a
/// little late sees the crossing in the peer's bitfield; one a little early
/// sees it below and holds the contact open.
pub const MARGIN: Duration = Duration::from_secs(2);

/// How long a first contact listens to a peer below the threshold that
/// has not moved yet (its rate unknown) before the idle timeout may end it:
/// a leecher that is just starting (still finding peers, or choked) sends
/// its first `have` within this time if it gets one piece per 30 s, and its
/// rate is then known. Costs contact time, never a visit.
pub const SAMPLE: Duration = Duration::from_secs(30);

/// Shortest span of observations a rate is computed over: counts read
/// within one second say nothing about a rate of pieces (a bitfield and
/// the `have`s of a lazy bitfield arrive together).
const MIN_SPAN_US: i64 = 1_000_000;

/// What a contact needs to decide to stay open through silences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold {
    /// The completion threshold: the pieces needed follow from the piece
    /// count, which a contact may learn on the way (ut_metadata).
    pub threshold: f64,
    /// (time µs, pieces) of an earlier observation the rate is measured
    /// from; None: from the contact's first count.
    pub baseline: Option<(i64, u64)>,
    /// Listen this long into the contact to a peer that has not moved yet
    /// when nothing earlier told its rate (a first contact): [`SAMPLE`].
    pub sample: Duration,
}

/// The smallest piece count at or above `threshold` of `n` pieces, by the
/// completion rule's own comparison (`(have as f64) < threshold * n` is
/// below), so float rounding cannot move it by one.
pub fn pieces_needed(n: u64, threshold: f64) -> u64 {
    let x = threshold * n as f64;
    let mut c = x.max(0.0).ceil().min(u64::MAX as f64 / 2.0) as u64;
    while c > 0 && ((c - 1) as f64) >= x {
        c -= 1;
    }
    while (c as f64) < x {
        c += 1;
    }
    c
}

/// Pieces per second over the observations of the last `window_us`
/// (oldest first), from the earliest in the window to the latest; None
/// when they span less than a second. A count that fell gives 0.
pub fn rate(obs: &[(i64, u64)], window_us: i64) -> Option<f64> {
    let &(t1, c1) = obs.last()?;
    let &(t0, c0) = obs.iter().find(|o| o.0 >= t1.saturating_sub(window_us))?;
    let span = t1 - t0;
    if span < MIN_SPAN_US {
        return None;
    }
    Some(c1.saturating_sub(c0) as f64 / (span as f64 / 1e6))
}

/// How long to wait after `now_us` before visiting a peer again, given its
/// observations, the torrent's piece count and the bounds.
pub fn next_wait(
    obs: &[(i64, u64)],
    n: Option<u64>,
    threshold: f64,
    now_us: i64,
    min: Duration,
    max: Duration,
) -> Duration {
    let (Some(n), Some(&(t1, c1))) = (n, obs.last()) else {
        return max;
    };
    let need = pieces_needed(n, threshold);
    if c1 >= need {
        return max;
    }
    let window = i64::try_from(max.as_micros().saturating_mul(2)).unwrap_or(i64::MAX);
    match rate(obs, window) {
        Some(r) if r > 0.0 => {
            let eta_s = (need - c1) as f64 / r;
            let at_us = t1 as f64 + (eta_s + MARGIN.as_secs_f64()) * 1e6;
            let wait_s = ((at_us - now_us as f64) / 1e6).max(0.0);
            Duration::from_secs_f64(wait_s.min(max.as_secs_f64())).clamp(min, max)
        }
        _ => max,
    }
}

/// The earliest observation in the rate window ending at the latest one:
/// the baseline a contact measures the rate from.
pub fn baseline(obs: &[(i64, u64)], max: Duration) -> Option<(i64, u64)> {
    let &(t1, _) = obs.last()?;
    let window = i64::try_from(max.as_micros().saturating_mul(2)).unwrap_or(i64::MAX);
    obs.iter().find(|o| o.0 >= t1.saturating_sub(window)).copied()
}

/// Whether a contact that has heard nothing for an idle timeout stays open:
/// the peer is below the threshold, and either moving since `baseline` (or
/// since the contact's `first` count) at a rate that reaches the threshold
/// within `left_s` seconds (what remains of the contact's cap), or not
/// moved yet with nothing known of its rate and the contact younger than
/// `h.sample` (`elapsed_s`).
#[allow(clippy::too_many_arguments)]
pub fn hold_open(
    h: &Hold,
    n: u64,
    first: Option<(i64, u64)>,
    count: u64,
    now_us: i64,
    elapsed_s: f64,
    left_s: f64,
) -> bool {
    let need = pieces_needed(n, h.threshold);
    if count >= need {
        return false;
    }
    let moving = h
        .baseline
        .or(first)
        .filter(|&(tb, cb)| count > cb && now_us - tb >= MIN_SPAN_US);
    let Some((tb, cb)) = moving else {
        // Not moving (yet): a first contact samples a while.
        return h.baseline.is_none() && elapsed_s < h.sample.as_secs_f64();
    };
    let span = now_us - tb;
    let r = (count - cb) as f64 / (span as f64 / 1e6);
    (need - count) as f64 / r <= left_s
}

/// Adds an observation, keeping at most [`MAX_OBS`] (the oldest go).
pub fn observe(obs: &mut Vec<(i64, u64)>, ts: i64, count: u64) {
    if obs.last().is_some_and(|o| o.0 > ts) {
        // Out of order (an incoming contact reported late): keep the order.
        let i = obs.partition_point(|o| o.0 <= ts);
        obs.insert(i, (ts, count));
    } else {
        obs.push((ts, count));
    }
    if obs.len() > MAX_OBS {
        obs.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    const MIN: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn needed_pieces_follow_the_completion_rule() {
        // At the threshold exactly is complete: 98 of 100.
        assert_eq!(pieces_needed(100, 0.98), 98);
        assert_eq!(pieces_needed(1000, 0.98), 980);
        // 0.07 × 100 is 7.000000000000001 in floats: by the rule's own
        // comparison 7 is below, so 8 are needed; 0.58 × 100 is
        // 57.99999999999999: 58 are enough.
        let (t, n) = (0.07, 100u64);
        assert!((7_f64) < t * n as f64);
        assert_eq!(pieces_needed(n, t), 8);
        assert_eq!(pieces_needed(100, 0.58), 58);
        assert_eq!(pieces_needed(24, 0.98), 24);
        assert_eq!(pieces_needed(256, 0.98), 251);
        assert_eq!(pieces_needed(50, 0.5), 25);
        assert_eq!(pieces_needed(0, 0.98), 0);
        for n in [1u64, 7, 24, 100, 256, 1000, 65_537] {
            let c = pieces_needed(n, 0.98);
            assert!(
                (c as f64) >= 0.98 * n as f64 && ((c - 1) as f64) < 0.98 * n as f64,
                "{n}"
            );
        }
    }

    #[test]
    fn a_moving_peer_is_visited_just_after_its_crossing() {
        // 100 pieces, 1 piece/s: 40 at t=0, 50 at t=10 s; 48 more to go
        // (98 needed), crossing at t=58 s, visit at 60 s.
        let obs = [(0, 40), (10 * S, 50)];
        let w = next_wait(&obs, Some(100), 0.98, 10 * S, MIN, MAX);
        assert_eq!(w, Duration::from_secs(50));
        // Bounded below and above.
        let fast = [(0, 0), (10 * S, 97)];
        assert_eq!(next_wait(&fast, Some(100), 0.98, 10 * S, MIN, MAX), MIN);
        let slow = [(0, 0), (10 * S, 1)];
        assert_eq!(next_wait(&slow, Some(100), 0.98, 10 * S, MIN, MAX), MAX);
    }

    #[test]
    fn a_peer_that_does_not_move_waits_the_longest_interval() {
        // One observation, or counts that do not change, or no piece count:
        // the fixed revisit, so a still swarm costs no more visits.
        assert_eq!(next_wait(&[(0, 5)], Some(100), 0.98, 0, MIN, MAX), MAX);
        assert_eq!(next_wait(&[(0, 5), (6 * S, 5)], Some(100), 0.98, 6 * S, MIN, MAX), MAX);
        assert_eq!(next_wait(&[(0, 5), (6 * S, 9)], None, 0.98, 6 * S, MIN, MAX), MAX);
        // Within one second: no rate.
        assert_eq!(next_wait(&[(0, 5), (S / 2, 9)], Some(100), 0.98, S, MIN, MAX), MAX);
        // Visits to a still peer over an hour: as many as fixed revisits.
        let mut obs = Vec::new();
        let (mut t, mut visits) = (0i64, 0);
        while t < 3600 * S {
            visits += 1;
            observe(&mut obs, t, 30);
            observe(&mut obs, t + 6 * S, 30);
            t += 6 * S + next_wait(&obs, Some(100), 0.98, t + 6 * S, MIN, MAX).as_micros() as i64;
        }
        assert_eq!(visits, 12);
    }

    #[test]
    fn the_rate_forgets_what_is_older_than_its_window() {
        // Stalled for an hour, then 2 pieces/s for 10 s: a 600 s window
        // starts at the last still observation.
        let obs = [(0, 10), (3600 * S, 10), (3610 * S, 30)];
        assert_eq!(rate(&obs, 600 * S), Some(2.0));
        // A 700 s window reaches back to 3000 s: 20 pieces in 610 s.
        let recent = [(3000 * S, 10), (3600 * S, 10), (3610 * S, 30)];
        let r = rate(&recent, 700 * S).unwrap_or(0.0);
        assert!((r - 20.0 / 610.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn holding_a_contact_open() {
        let h = Hold {
            threshold: 0.98,
            baseline: Some((0, 50)),
            sample: SAMPLE,
        };
        // 90 at 40 s: 1 piece/s since the baseline, 8 to go (98 of 100): within 30 s
        // left, not within 5.
        assert!(hold_open(&h, 100, None, 90, 40 * S, 10.0, 30.0));
        assert!(!hold_open(&h, 100, None, 90, 40 * S, 10.0, 7.0));
        // Not moving since the baseline (its rate is known: 0), or already
        // there: no.
        assert!(!hold_open(&h, 100, None, 50, 40 * S, 10.0, 100.0));
        assert!(!hold_open(&h, 100, None, 98, 40 * S, 10.0, 100.0));
        // Without a baseline, the contact's first count is one.
        let h = Hold {
            threshold: 0.98,
            baseline: None,
            sample: SAMPLE,
        };
        assert!(hold_open(&h, 100, Some((10 * S, 80)), 90, 20 * S, 10.0, 10.0));
        // A first contact with a peer that has not moved: listened to for
        // SAMPLE, then let go.
        assert!(hold_open(&h, 100, Some((10 * S, 0)), 0, 20 * S, 10.0, 100.0));
        assert!(!hold_open(&h, 100, Some((10 * S, 0)), 0, 45 * S, 35.0, 100.0));
        // A peer that said nothing about pieces yet (BEP 3 lets one with
        // none skip the bitfield) is sampled too.
        assert!(hold_open(&h, 100, None, 0, 20 * S, 10.0, 10.0));
    }
}
