//! What one batch of posts adds to the trends read model, worked out once before any store
//! is touched.
//!
//! A [`TrendBatch`] is a plain value: per scope (each hashtag, and [`ALL`]) the counts to
//! add at each resolution, and per hashtag and day the users seen and the latest minute.
//! Stores only persist it, so both backends count alike by construction.
//!
//! Counts are the one part that is not idempotent by itself (users are sets, latest minutes
//! and ranks are maxima). Each scope's counts carry the first and last position of the hits
//! they include, which is what a store needs to add them at most once: SQLite writes a whole
//! batch and its checkpoint in one transaction; Redis, whose writes are not atomic across
//! scopes, keeps per scope the last position it counted and skips hits at or before it
//! ([`TrendBatch::recount`] gives what is left when another runner counted part of a scope).

use std::collections::{BTreeMap, BTreeSet};

use cairn_events::Position;

use super::{ALL, Level, Minute, TrendHit, TrendRules};

/// What a batch of hits adds to the trends read model.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendBatch {
    hits: Vec<TrendHit>,
    rules: TrendRules,
    kept_from: Option<Minute>,
    scopes: Vec<ScopeCounts>,
    days: Vec<TagDay>,
}

/// The counts one batch adds in one scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeCounts {
    /// A hashtag key, or [`ALL`].
    pub scope: String,
    /// The first and last position of the hits counted here.
    pub first: Position,
    pub last: Position,
    /// (level, unit) → hits; minutes past their retention are left out.
    pub counts: BTreeMap<(Level, i64), u64>,
}

/// One hashtag's use on one day, within a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagDay {
    pub tag: String,
    /// Days since the epoch.
    pub day: i64,
    /// Who used it that day.
    pub users: BTreeSet<String>,
    /// The latest minute it was used that day (kept even when its minute counter is not).
    pub latest: Minute,
}

impl TrendBatch {
    /// Count `hits` under `rules`, keeping minute counters as of `now`.
    pub fn new(hits: Vec<TrendHit>, rules: &TrendRules, now: Minute) -> Self {
        let kept_from = rules.minutes_kept_from(now);
        let mut by_scope: BTreeMap<&str, Vec<&TrendHit>> = BTreeMap::new();
        let mut by_day: BTreeMap<(&str, i64), TagDay> = BTreeMap::new();
        for hit in &hits {
            for scope in hit.tags.iter().map(String::as_str).chain([ALL]) {
                by_scope.entry(scope).or_default().push(hit);
            }
            let day = Level::Day.unit_of(hit.minute);
            for tag in &hit.tags {
                let entry = by_day.entry((tag, day)).or_insert_with(|| TagDay {
                    tag: tag.clone(),
                    day,
                    users: BTreeSet::new(),
                    latest: hit.minute,
                });
                entry.users.insert(hit.user_id.clone());
                entry.latest = entry.latest.max(hit.minute);
            }
        }
        let scopes = by_scope
            .into_iter()
            .filter_map(|(scope, hits)| ScopeCounts::of(scope, hits, kept_from))
            .collect();
        let days = by_day.into_values().collect();
        TrendBatch {
            hits,
            rules: *rules,
            kept_from,
            scopes,
            days,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// The counts per scope, in scope order.
    pub fn scopes(&self) -> &[ScopeCounts] {
        &self.scopes
    }

    /// Each hashtag and day the batch touches, in that order.
    pub fn days(&self) -> &[TagDay] {
        &self.days
    }

    pub fn rules(&self) -> &TrendRules {
        &self.rules
    }

    /// The first minute whose counter is kept; `None` when all are.
    pub fn minutes_kept_from(&self) -> Option<Minute> {
        self.kept_from
    }

    /// `scope`'s counts from only its hits after `position`: what is left to add when the
    /// store has already counted the scope up to there. `None` if nothing is left.
    pub fn recount(&self, scope: &str, position: Position) -> Option<ScopeCounts> {
        let rest = self.hits.iter().filter(|h| {
            h.position > position && (scope == ALL || h.tags.iter().any(|t| t == scope))
        });
        ScopeCounts::of(scope, rest, self.kept_from)
    }

    /// The rank `day` earns once stored, given its distinct users that day and the day
    /// before (as the store counts them after adding this batch) and the latest minute the
    /// store knew of; `None` if it does not score.
    pub fn rank(
        &self,
        day: &TagDay,
        observed: u64,
        yesterday: u64,
        stored_latest: Option<Minute>,
    ) -> Option<f64> {
        let latest = stored_latest.map_or(day.latest, |m| m.max(day.latest));
        self.rules.rank(observed, yesterday, latest)
    }
}

impl ScopeCounts {
    /// The counts of `hits` in `scope`; `None` when there are no hits.
    fn of<'a>(
        scope: &str,
        hits: impl IntoIterator<Item = &'a TrendHit>,
        kept_from: Option<Minute>,
    ) -> Option<Self> {
        let mut out = ScopeCounts {
            scope: scope.to_owned(),
            first: Position::MAX,
            last: Position::MIN,
            counts: BTreeMap::new(),
        };
        for hit in hits {
            out.first = out.first.min(hit.position);
            out.last = out.last.max(hit.position);
            for level in Level::ALL {
                if level == Level::Minute && kept_from.is_some_and(|m| hit.minute < m) {
                    continue;
                }
                *out.counts
                    .entry((level, level.unit_of(hit.minute)))
                    .or_default() += 1;
            }
        }
        (out.first <= out.last).then_some(out)
    }

    /// The counts at one level: (unit, hits), in unit order.
    pub fn at(&self, level: Level) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.counts
            .iter()
            .filter(move |((l, _), _)| *l == level)
            .map(|((_, unit), n)| (*unit, *n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::trends::MINUTES_PER_DAY;

    const DAY: i64 = 20_000;

    fn hit(position: Position, minute: Minute, user: &str, tags: &[&str]) -> TrendHit {
        TrendHit {
            position,
            minute: DAY * MINUTES_PER_DAY + minute,
            user_id: user.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn counts(scope: &ScopeCounts, level: Level) -> Vec<(i64, u64)> {
        scope.at(level).collect()
    }

    #[test]
    fn counts_each_hit_once_per_scope_and_level() {
        let hits = vec![
            hit(1, 10, "a", &["rust", "go"]),
            hit(2, 10, "b", &["rust"]),
            hit(3, 70, "a", &[]),
        ];
        let batch = TrendBatch::new(hits, &TrendRules::default(), DAY * MINUTES_PER_DAY);
        let scopes: Vec<&str> = batch.scopes().iter().map(|s| s.scope.as_str()).collect();
        assert_eq!(scopes, ["*", "go", "rust"]);
        let (all, rust) = (&batch.scopes()[0], &batch.scopes()[2]);
        let minute = DAY * MINUTES_PER_DAY;
        assert_eq!(
            counts(all, Level::Minute),
            [(minute + 10, 2), (minute + 70, 1)]
        );
        assert_eq!(counts(all, Level::Hour), [(DAY * 24, 2), (DAY * 24 + 1, 1)]);
        assert_eq!(counts(all, Level::Day), [(DAY, 3)]);
        assert_eq!(counts(rust, Level::Minute), [(minute + 10, 2)]);
        assert_eq!(counts(rust, Level::Day), [(DAY, 2)]);
        assert_eq!((all.first, all.last, rust.first, rust.last), (1, 3, 1, 2));
    }

    #[test]
    fn users_and_latest_minute_per_tag_and_day() {
        let hits = vec![
            hit(1, 50, "a", &["rust"]),
            hit(2, 20, "a", &["rust"]),
            hit(3, 30, "b", &["rust"]),
            hit(4, MINUTES_PER_DAY + 5, "c", &["rust"]),
            hit(5, 40, "d", &[]),
        ];
        let batch = TrendBatch::new(hits, &TrendRules::default(), 0);
        let days: Vec<(&str, i64, usize, Minute)> = batch
            .days()
            .iter()
            .map(|d| (d.tag.as_str(), d.day, d.users.len(), d.latest))
            .collect();
        let start = DAY * MINUTES_PER_DAY;
        assert_eq!(
            days,
            [
                ("rust", DAY, 2, start + 50),
                ("rust", DAY + 1, 1, start + MINUTES_PER_DAY + 5)
            ],
            "no day for ALL, users distinct, latest by minute not by position"
        );
    }

    #[test]
    fn minutes_past_retention_are_not_counted() {
        let rules = TrendRules {
            minute_retention_days: Some(1),
            ..TrendRules::default()
        };
        let hits = vec![
            hit(1, 10, "a", &["old"]),
            hit(2, 2 * MINUTES_PER_DAY + 10, "a", &["new"]),
        ];
        // Today is DAY + 2: DAY + 1 and DAY + 2 keep their minutes.
        let batch = TrendBatch::new(hits, &rules, (DAY + 2) * MINUTES_PER_DAY + 100);
        assert_eq!(batch.minutes_kept_from(), Some((DAY + 1) * MINUTES_PER_DAY));
        let old = batch.scopes().iter().find(|s| s.scope == "old").unwrap();
        assert_eq!(counts(old, Level::Minute), []);
        assert_eq!(counts(old, Level::Hour).len(), 1);
        assert_eq!(counts(old, Level::Day), [(DAY, 1)]);
        let new = batch.scopes().iter().find(|s| s.scope == "new").unwrap();
        assert_eq!(counts(new, Level::Minute).len(), 1);
        // The old day still dates its rank by its latest use.
        assert_eq!(batch.days()[1].latest, DAY * MINUTES_PER_DAY + 10);
    }

    #[test]
    fn recount_keeps_only_hits_after_a_position() {
        let hits = vec![
            hit(1, 1, "a", &["rust"]),
            hit(2, 2, "b", &["go"]),
            hit(3, 3, "c", &["rust"]),
        ];
        let batch = TrendBatch::new(hits, &TrendRules::default(), 0);
        let rest = batch.recount("rust", 1).unwrap();
        assert_eq!((rest.first, rest.last), (3, 3));
        assert_eq!(counts(&rest, Level::Day), [(DAY, 1)]);
        let all = batch.recount(ALL, 1).unwrap();
        assert_eq!(counts(&all, Level::Day), [(DAY, 2)]);
        assert_eq!(batch.recount("rust", 3), None);
        assert_eq!(batch.recount("go", 2), None);
    }

    #[test]
    fn rank_is_dated_by_the_latest_use_known() {
        let rules = TrendRules {
            threshold: 2,
            ..TrendRules::default()
        };
        let batch = TrendBatch::new(vec![hit(1, 10, "a", &["rust"])], &rules, 0);
        let day = &batch.days()[0];
        assert_eq!(batch.rank(day, 1, 0, None), None, "below the threshold");
        let here = batch.rank(day, 4, 1, None).unwrap();
        let later = batch.rank(day, 4, 1, Some(day.latest + 60)).unwrap();
        let earlier = batch.rank(day, 4, 1, Some(day.latest - 5)).unwrap();
        assert_eq!(Some(here), rules.rank(4, 1, day.latest));
        assert!(later > here);
        assert_eq!(earlier, here);
    }
}
