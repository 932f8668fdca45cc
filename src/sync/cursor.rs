//! The walk over Rebilly's customer list by high-water mark, as a pure state machine: which
//! page to ask for next, and what a page that came back means. No I/O here, so every case
//! (many customers on one timestamp, customers moving during the walk) is unit-tested.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What the walk needs of one listed customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    /// `updatedTime` verbatim, as Rebilly wrote it (it goes back into the filter as is).
    pub updated: Option<String>,
    pub revision: Option<i64>,
}

impl Item {
    /// What identifies this very snapshot: a customer changed twice within one second keeps
    /// its `updatedTime` but not its revision. Without a revision it is never skipped.
    fn key(&self) -> Option<String> {
        self.revision
            .map(|revision| format!("{}#{revision}", self.id))
    }
}

/// Where the walk stands; stored after every applied page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `updatedTime` of the newest customer read; `None` before the first one.
    mark: Option<String>,
    /// Snapshots (id and revision) at the mark already read and applied.
    seen: BTreeSet<String>,
    /// Customers at the mark read since the walk (re)started the mark's timestamp: the offset,
    /// within the `updatedTime:MARK..` filter, of the next customer to read.
    position: u64,
    /// The customer read last. The next page starts one before `position` and must begin with
    /// it: otherwise customers before the offset moved and the offset can no longer be trusted.
    last: Option<String>,
}

/// One page to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Rebilly's filter, `updatedTime:MARK..`, once there is a mark.
    pub filter: Option<String>,
    pub offset: u64,
    pub limit: u32,
    /// The id the page must begin with (the overlap), if any.
    pub expect: Option<String>,
}

/// What to do with a page that came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The list changed before the offset: the page is dropped and the mark's timestamp is
    /// read again from its start (customers already applied there are skipped).
    Restart,
    /// Apply the customers at these indexes of the page; `done` when it was the last page.
    Next { apply: Vec<usize>, done: bool },
}

impl Cursor {
    pub fn mark(&self) -> Option<&str> {
        self.mark.as_deref()
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a cursor serializes")
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads the mark's timestamp again from its start, keeping what was applied there.
    pub fn rewind(&mut self) {
        self.position = 0;
        self.last = None;
    }

    /// Moves the mark `seconds` back and forgets what was applied at it, so that the walk
    /// reads again every customer changed in that window. Rebilly's list may show a change
    /// later than a newer one (it lags behind the resource); such a change has an
    /// `updatedTime` below the mark and an incremental walk would never meet it otherwise.
    /// A mark that is not an RFC 3339 time is only rewound.
    pub fn look_back(&mut self, seconds: u64) {
        self.rewind();
        if seconds == 0 {
            return;
        }
        let Some(mark) = self.mark.as_deref() else {
            return;
        };
        let Ok(time) = OffsetDateTime::parse(mark, &Rfc3339) else {
            return;
        };
        let earlier = time.to_offset(time::UtcOffset::UTC)
            - time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
        if let Ok(text) = earlier.format(&Rfc3339) {
            self.mark = Some(text);
            self.seen.clear();
        }
    }

    /// The next page: from the mark, at the offset within the mark's timestamp, overlapping the
    /// previous page by one customer. `limit` must be at least 2, so a page always moves on.
    pub fn request(&self, limit: u32) -> PageRequest {
        let expect = self.last.clone().filter(|_| self.position > 0);
        PageRequest {
            filter: self
                .mark
                .as_ref()
                .map(|mark| format!("updatedTime:{mark}..")),
            offset: if expect.is_some() {
                self.position - 1
            } else {
                0
            },
            limit: limit.max(2),
            expect,
        }
    }

    /// Takes in the page that answered `request`.
    pub fn advance(&mut self, request: &PageRequest, items: &[&Item]) -> Step {
        let mut start = 0;
        if let Some(expected) = &request.expect {
            match items.first() {
                Some(first) if first.id == *expected && first.updated == self.mark => start = 1,
                _ => {
                    self.rewind();
                    return Step::Restart;
                }
            }
        }
        let done = items.len() < request.limit as usize;
        let fresh = &items[start..];
        let Some(last) = fresh.last() else {
            return Step::Next {
                apply: Vec::new(),
                done: true,
            };
        };
        let apply = (start..items.len())
            .filter(|&i| {
                let already = items[i].key().is_some_and(|key| self.seen.contains(&key));
                !(items[i].updated == self.mark && already)
            })
            .collect();
        if last.updated == self.mark {
            self.position += fresh.len() as u64;
            self.seen.extend(fresh.iter().filter_map(|item| item.key()));
        } else {
            // The trailing run of the page's newest timestamp begins that timestamp's group:
            // the customer before it is older (or is the overlap, at the old mark).
            let run: BTreeSet<String> = fresh
                .iter()
                .rev()
                .take_while(|item| item.updated == last.updated)
                .filter_map(|item| item.key())
                .collect();
            self.mark = last.updated.clone();
            self.position = fresh
                .iter()
                .rev()
                .take_while(|item| item.updated == last.updated)
                .count() as u64;
            self.seen = run;
        }
        self.last = Some(last.id.clone());
        Step::Next { apply, done }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn looking_back_moves_the_mark_and_reads_the_window_again() {
        let mut cursor = super::Cursor {
            mark: Some("2026-01-01T00:10:00+02:00".into()),
            seen: ["c#2".to_owned()].into(),
            position: 7,
            last: Some("c".into()),
        };
        cursor.look_back(300);
        assert_eq!(cursor.mark(), Some("2025-12-31T22:05:00Z"));
        assert!(cursor.seen.is_empty());
        assert_eq!((cursor.position, cursor.last.as_deref()), (0, None));
        let mut unreadable = super::Cursor {
            mark: Some("not a time".into()),
            seen: ["c#2".to_owned()].into(),
            ..super::Cursor::default()
        };
        unreadable.look_back(300);
        assert_eq!(unreadable.mark(), Some("not a time"));
        assert_eq!(unreadable.seen.len(), 1, "only rewound");
    }

    use super::*;

    /// A list sorted by (updatedTime, id), served the way Rebilly pages it.
    struct List(Vec<Item>);

    impl List {
        fn serve(&self, request: &PageRequest) -> Vec<&Item> {
            let from = request
                .filter
                .as_deref()
                .map(|f| f.trim_start_matches("updatedTime:").trim_end_matches(".."));
            let mut sorted: Vec<&Item> = self
                .0
                .iter()
                .filter(|item| from.is_none_or(|from| item.updated.as_deref() >= Some(from)))
                .collect();
            sorted.sort_by(|a, b| (&a.updated, &a.id).cmp(&(&b.updated, &b.id)));
            sorted
                .into_iter()
                .skip(request.offset as usize)
                .take(request.limit as usize)
                .collect()
        }

        fn set(&mut self, id: &str, updated: &str) {
            match self.0.iter_mut().find(|item| item.id == id) {
                Some(item) => {
                    item.updated = Some(updated.to_owned());
                    item.revision = item.revision.map(|r| r + 1);
                }
                None => self.0.push(item(id, updated)),
            }
        }
    }

    fn item(id: &str, updated: &str) -> Item {
        Item {
            id: id.to_owned(),
            updated: Some(updated.to_owned()),
            revision: Some(1),
        }
    }

    /// Walks to the end, calling `between` after every page; returns the ids applied in order.
    fn walk(
        cursor: &mut Cursor,
        list: &mut List,
        limit: u32,
        mut between: impl FnMut(usize, &mut List),
    ) -> Vec<String> {
        let mut applied = Vec::new();
        for page in 0..100_000 {
            let request = cursor.request(limit);
            let items: Vec<Item> = list.serve(&request).into_iter().cloned().collect();
            let refs: Vec<&Item> = items.iter().collect();
            match cursor.advance(&request, &refs) {
                Step::Restart => {}
                Step::Next { apply, done } => {
                    applied.extend(apply.into_iter().map(|i| items[i].id.clone()));
                    if done {
                        return applied;
                    }
                }
            }
            between(page, list);
        }
        panic!("the walk did not end");
    }

    #[test]
    fn thousands_sharing_one_timestamp_are_each_read_once_across_pages() {
        let mut list = List(Vec::new());
        for i in 0..2_500 {
            list.set(&format!("a{i:05}"), "2026-01-01T00:00:00Z");
        }
        for i in 0..10 {
            list.set(
                &format!("b{i}"),
                &format!("2026-01-0{}T00:00:00Z", 2 + i % 5),
            );
        }
        let mut cursor = Cursor::default();
        let applied = walk(&mut cursor, &mut list, 100, |_, _| {});
        let unique: BTreeSet<&String> = applied.iter().collect();
        assert_eq!(applied.len(), 2_510, "each customer applied exactly once");
        assert_eq!(unique.len(), 2_510);
        assert_eq!(cursor.mark(), Some("2026-01-06T00:00:00Z"));
    }

    #[test]
    fn a_second_walk_reads_only_the_mark_and_what_changed() {
        let mut list = List((0..500).map(|i| item(&format!("c{i:03}"), "t1")).collect());
        let mut cursor = Cursor::default();
        walk(&mut cursor, &mut list, 50, |_, _| {});
        list.set("c007", "t2");
        list.set("new", "t3");
        cursor.rewind();
        let applied = walk(&mut cursor, &mut list, 50, |_, _| {});
        assert_eq!(applied, vec!["c007", "new"]);
    }

    #[test]
    fn customers_moving_during_the_walk_are_never_skipped() {
        // While the walk is inside a timestamp shared by many, customers it already read move
        // to a later time: a plain offset would skip the ones behind them.
        let mut list = List((0..300).map(|i| item(&format!("m{i:03}"), "t1")).collect());
        let mut cursor = Cursor::default();
        let applied = walk(&mut cursor, &mut list, 40, |page, list| {
            if page < 5 {
                list.set(&format!("m{:03}", page * 3), "t9");
            }
        });
        let unique: BTreeSet<&String> = applied.iter().collect();
        assert_eq!(unique.len(), 300, "every customer read at least once");
    }

    #[test]
    fn a_page_that_does_not_start_with_the_overlap_restarts_the_timestamp() {
        let mut cursor = Cursor::default();
        let first = [item("a", "t1"), item("b", "t1")];
        let request = cursor.request(2);
        assert_eq!(request.offset, 0);
        let refs: Vec<&Item> = first.iter().collect();
        assert!(matches!(cursor.advance(&request, &refs), Step::Next { .. }));
        let next = cursor.request(2);
        assert_eq!(next.filter.as_deref(), Some("updatedTime:t1.."));
        assert_eq!((next.offset, next.expect.as_deref()), (1, Some("b")));
        let moved = [item("c", "t1")];
        let refs: Vec<&Item> = moved.iter().collect();
        assert_eq!(cursor.advance(&next, &refs), Step::Restart);
        assert_eq!(cursor.request(2).offset, 0);
    }

    #[test]
    fn a_customer_changed_again_within_the_marks_second_is_read_again() {
        let mut list = List(vec![item("a", "t1"), item("b", "t2")]);
        let mut cursor = Cursor::default();
        walk(&mut cursor, &mut list, 10, |_, _| {});
        list.set("b", "t2");
        cursor.rewind();
        assert_eq!(walk(&mut cursor, &mut list, 10, |_, _| {}), vec!["b"]);
    }

    #[test]
    fn a_cursor_survives_encoding() {
        let mut cursor = Cursor::default();
        let page = [item("a", "t1"), item("b", "t2")];
        let refs: Vec<&Item> = page.iter().collect();
        cursor.advance(&cursor.request(5), &refs);
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }
}
