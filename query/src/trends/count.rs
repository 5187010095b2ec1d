//! Counting the buckets of a `/trend` question, with its work and memory bounded by what
//! it reads rather than by the length of its span.
//!
//! The counters are read coarse to fine. Day counters are read for every day the span
//! touches (a store reads only those that exist: a SQLite index range, a few Redis hashes
//! of 1,024 days each). A day with hits that lies wholly inside one bucket adds to that
//! bucket; a day with hits that a bucket edge cuts is read again as hours, and an hour with
//! hits that an edge cuts is read again as minutes, which always lie inside one bucket. So
//! hour and minute counters are read only for days and hours that have hits and hold an
//! edge: at most one day and one hour per edge, and no minutes at all when every edge is on
//! the hour.
//!
//! Each read covers at most [`READ_CHUNK`] units and is added into the bucket totals before
//! the next one is made, so a question holds its buckets and one chunk of counters at a
//! time, never its whole span. The answer is not one snapshot: a hit counted while the
//! question reads is in it or not, as if it had been asked a moment earlier or later.

use super::{Buckets, Level, merge_ranges};
use crate::read_store::{ReadError, TrendStore};

/// The most units (days, hours or minutes) one read of the counters covers.
pub const READ_CHUNK: i64 = 65_536;

/// The count of each bucket of `buckets`, in `scope` (a hashtag key, or
/// [`ALL`](super::ALL)).
pub async fn count_buckets(
    store: &dyn TrendStore,
    scope: &str,
    buckets: &Buckets,
) -> Result<Vec<u64>, ReadError> {
    let mut counts = vec![0_u64; usize::try_from(buckets.len()).unwrap_or(0)];
    if buckets.is_empty() {
        return Ok(counts);
    }
    let day = Level::Day.minutes();
    let mut ranges = vec![(
        buckets.from.div_euclid(day),
        (buckets.to - 1).div_euclid(day) + 1,
    )];
    for (level, finer) in [
        (Level::Day, Some(Level::Hour)),
        (Level::Hour, Some(Level::Minute)),
        (Level::Minute, None),
    ] {
        let size = level.minutes();
        let mut cut = Vec::new();
        for chunk in chunks(&ranges, READ_CHUNK) {
            for (unit, n) in store.trend_counts(scope, level, &chunk).await? {
                let (start, end) = (unit * size, (unit + 1) * size);
                if let Some(slot) = buckets.whole(start, end).and_then(|i| counts.get_mut(i)) {
                    *slot += n;
                } else if let Some(finer) = finer {
                    // The part inside the span, in units of the finer level.
                    let f = finer.minutes();
                    let (first, last) = (start.max(buckets.from), end.min(buckets.to) - 1);
                    if first <= last {
                        cut.push((first.div_euclid(f), last.div_euclid(f) + 1));
                    }
                }
            }
        }
        if cut.is_empty() {
            break;
        }
        merge_ranges(&mut cut);
        ranges = cut;
    }
    Ok(counts)
}

/// `ranges` (sorted, not overlapping) in groups of at most `max` units, long ranges split.
fn chunks(ranges: &[(i64, i64)], max: i64) -> Vec<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut room = max;
    for &(first, end) in ranges {
        let mut first = first;
        while first < end {
            let take = (end - first).min(room);
            current.push((first, first + take));
            first += take;
            room -= take;
            if room == 0 {
                out.push(std::mem::take(&mut current));
                room = max;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_max_units() {
        assert_eq!(
            chunks(&[(0, 3), (10, 17), (20, 21)], 4),
            [
                vec![(0, 3), (10, 11)],
                vec![(11, 15)],
                vec![(15, 17), (20, 21)]
            ]
        );
        assert_eq!(chunks(&[(-8, -4)], 4), [vec![(-8, -4)]]);
        assert!(chunks(&[], 4).is_empty());
    }
}
