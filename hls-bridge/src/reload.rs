//! Blocking playlist reload (draft-pantos-hls-rfc8216bis §6.2.5.2) as a pure
//! decision.
//!
//! The HTTP layer parses the query once with [`PlaylistQuery::parse`], then
//! loops: `decide(edge, query, waited)`; on [`Decision::Wait`] it awaits the
//! rendition's change notification (a `tokio::sync::watch` fed with
//! [`Edge`]) or the returned remaining time, whichever comes first, and asks
//! again. No thread and no polling per request: a blocked request costs one
//! parked future.

use std::time::Duration;

/// The directives of a media playlist request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaylistQuery {
    /// `_HLS_msn`
    pub msn: Option<u64>,
    /// `_HLS_part`
    pub part: Option<u64>,
    /// `_HLS_skip=YES` (or `v2`; there are no date ranges to skip).
    pub skip: bool,
}

/// A request the spec says to refuse with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("_HLS_part without _HLS_msn")]
    PartWithoutMsn,
    #[error("{0} is not a decimal integer")]
    NotANumber(&'static str),
    #[error("_HLS_skip must be YES or v2")]
    BadSkip,
}

impl PlaylistQuery {
    /// Parses the query string (without `?`). Unknown parameters are ignored
    /// (CDNs and players add their own).
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = PlaylistQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "_HLS_msn" => {
                    q.msn = Some(
                        value
                            .parse()
                            .map_err(|_| QueryError::NotANumber("_HLS_msn"))?,
                    )
                }
                "_HLS_part" => {
                    q.part = Some(
                        value
                            .parse()
                            .map_err(|_| QueryError::NotANumber("_HLS_part"))?,
                    )
                }
                "_HLS_skip" => match value {
                    "YES" | "v2" => q.skip = true,
                    _ => return Err(QueryError::BadSkip),
                },
                _ => {}
            }
        }
        if q.part.is_some() && q.msn.is_none() {
            return Err(QueryError::PartWithoutMsn);
        }
        Ok(q)
    }

    /// Whether the request blocks at all.
    pub fn is_blocking(&self) -> bool {
        self.msn.is_some()
    }
}

/// What the blocking decision needs to know of a rendition: its live edge.
/// Small and `Copy`, so it is what the watch channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Media sequence number of the segment being written (the next one to
    /// complete).
    pub open_msn: u64,
    /// Parts published in it so far.
    pub open_parts: u64,
    /// Parts of the last complete segment (`open_msn - 1`), 0 if none.
    pub last_complete_parts: u64,
    /// `EXT-X-TARGETDURATION` in seconds.
    pub target_duration_secs: u64,
    /// The advertised `PART-TARGET`.
    pub part_target: Duration,
    /// `EXT-X-ENDLIST` is in the playlist.
    pub ended: bool,
}

impl Edge {
    /// Whether anything at all can be played yet.
    pub fn has_content(&self) -> bool {
        self.open_parts > 0 || (self.open_msn > 0 && self.last_complete_parts > 0)
    }

    /// How long a blocked request may wait before 503 (three target
    /// durations).
    pub fn max_block(&self) -> Duration {
        Duration::from_secs(3 * self.target_duration_secs)
    }

    /// The Advance Part Limit: 3 / PART-TARGET if it is under a second,
    /// otherwise 3 (§6.2.5.2).
    pub fn advance_part_limit(&self) -> f64 {
        let t = self.part_target.as_secs_f64();
        if t > 0.0 && t < 1.0 {
            3.0 / t
        } else {
            3.0
        }
    }
}

/// What to do with a playlist request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Render the playlist and answer 200.
    Ready,
    /// Hold the request; ask again on change, or after `remaining`.
    Wait { remaining: Duration },
    /// 400: asks for something too far ahead (§6.2.5.2).
    BadRequest,
    /// 503: waited three target durations and it did not come.
    Unavailable,
}

/// Decides a media playlist request against the rendition's current edge,
/// having already waited `waited` for it.
pub fn decide(edge: &Edge, query: &PlaylistQuery, waited: Duration) -> Decision {
    let ready = match (query.msn, edge.ended) {
        // A finished playlist answers everything at once (§6.2.5.2: ignore
        // the directives once EXT-X-ENDLIST is present).
        (_, true) => true,
        // A plain request: answer as soon as there is something to list.
        (None, false) => edge.has_content(),
        (Some(msn), false) => {
            // §6.2.5.2: more than two segments past the last complete one.
            let last_complete_plus_two = edge.open_msn + 1;
            if msn > last_complete_plus_two {
                return Decision::BadRequest;
            }
            match query.part {
                None => msn < edge.open_msn,
                Some(part) => {
                    // How many parts ahead of the last published one.
                    let ahead = if msn == edge.open_msn {
                        part as f64 - edge.open_parts as f64 + 1.0
                    } else if msn > edge.open_msn {
                        part as f64 + 1.0
                    } else {
                        0.0
                    };
                    if ahead > edge.advance_part_limit() {
                        return Decision::BadRequest;
                    }
                    part_published(edge, msn, part)
                }
            }
        }
    };
    if ready {
        return Decision::Ready;
    }
    let limit = edge.max_block();
    if waited >= limit {
        Decision::Unavailable
    } else {
        Decision::Wait {
            remaining: limit - waited,
        }
    }
}

/// Whether part `part` of segment `msn` is in the playlist. A part index
/// past the last part of a complete segment means part 0 of the next one
/// (§6.2.5.2).
fn part_published(edge: &Edge, msn: u64, part: u64) -> bool {
    if msn + 1 < edge.open_msn {
        // An older complete segment: its successor is complete too.
        true
    } else if msn + 1 == edge.open_msn {
        part < edge.last_complete_parts || edge.open_parts > 0
    } else if msn == edge.open_msn {
        part < edge.open_parts
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(open_msn: u64, open_parts: u64) -> Edge {
        Edge {
            open_msn,
            open_parts,
            last_complete_parts: 5,
            target_duration_secs: 1,
            part_target: Duration::from_millis(216),
            ended: false,
        }
    }

    fn q(msn: Option<u64>, part: Option<u64>) -> PlaylistQuery {
        PlaylistQuery {
            msn,
            part,
            skip: false,
        }
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn parses_directives() {
        assert_eq!(
            PlaylistQuery::parse("_HLS_msn=12&_HLS_part=3&_HLS_skip=YES").unwrap(),
            PlaylistQuery {
                msn: Some(12),
                part: Some(3),
                skip: true
            }
        );
        assert_eq!(PlaylistQuery::parse("").unwrap(), PlaylistQuery::default());
        assert!(PlaylistQuery::parse("_HLS_skip=v2&cdn=1").unwrap().skip);
        assert_eq!(
            PlaylistQuery::parse("_HLS_part=2"),
            Err(QueryError::PartWithoutMsn)
        );
        assert_eq!(
            PlaylistQuery::parse("_HLS_msn=-1"),
            Err(QueryError::NotANumber("_HLS_msn"))
        );
        assert_eq!(
            PlaylistQuery::parse("_HLS_msn=1&_HLS_part=x"),
            Err(QueryError::NotANumber("_HLS_part"))
        );
        assert_eq!(
            PlaylistQuery::parse("_HLS_skip=NO"),
            Err(QueryError::BadSkip)
        );
    }

    #[test]
    fn plain_requests_wait_only_for_the_first_part() {
        let mut e = edge(0, 0);
        e.last_complete_parts = 0;
        assert!(matches!(
            decide(&e, &q(None, None), NOW),
            Decision::Wait { .. }
        ));
        e.open_parts = 1;
        assert_eq!(decide(&e, &q(None, None), NOW), Decision::Ready);
    }

    #[test]
    fn msn_only_waits_for_the_whole_segment() {
        let e = edge(10, 2);
        assert_eq!(decide(&e, &q(Some(9), None), NOW), Decision::Ready);
        assert_eq!(decide(&e, &q(Some(3), None), NOW), Decision::Ready);
        assert_eq!(
            decide(&e, &q(Some(10), None), NOW),
            Decision::Wait {
                remaining: Duration::from_secs(3)
            }
        );
        assert!(matches!(
            decide(&e, &q(Some(11), None), NOW),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn parts_of_the_open_segment() {
        let e = edge(10, 2);
        assert_eq!(decide(&e, &q(Some(10), Some(0)), NOW), Decision::Ready);
        assert_eq!(decide(&e, &q(Some(10), Some(1)), NOW), Decision::Ready);
        assert!(matches!(
            decide(&e, &q(Some(10), Some(2)), NOW),
            Decision::Wait { .. }
        ));
        // The next segment's first part: wait.
        assert!(matches!(
            decide(&e, &q(Some(11), Some(0)), NOW),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn a_part_past_the_end_of_a_complete_segment_is_the_next_segments_first() {
        // Segment 9 had 5 parts; part 5 of 9 means part 0 of 10.
        let e = edge(10, 0);
        assert_eq!(decide(&e, &q(Some(9), Some(4)), NOW), Decision::Ready);
        assert!(matches!(
            decide(&e, &q(Some(9), Some(5)), NOW),
            Decision::Wait { .. }
        ));
        let e = edge(10, 1);
        assert_eq!(decide(&e, &q(Some(9), Some(5)), NOW), Decision::Ready);
    }

    #[test]
    fn too_far_ahead_is_400() {
        let e = edge(10, 2);
        // Last complete is 9: 11 is +2 (allowed), 12 is +3.
        assert!(matches!(
            decide(&e, &q(Some(11), None), NOW),
            Decision::Wait { .. }
        ));
        assert_eq!(decide(&e, &q(Some(12), None), NOW), Decision::BadRequest);
        assert_eq!(decide(&e, &q(Some(12), Some(0)), NOW), Decision::BadRequest);
        // Advance Part Limit: 3 / 0.216 ≈ 13.9 parts past the last one.
        // Last published is part 1: part 14 is 13 ahead, part 15 is 14.
        assert!(matches!(
            decide(&e, &q(Some(10), Some(14)), NOW),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(&e, &q(Some(10), Some(15)), NOW),
            Decision::BadRequest
        );
        assert_eq!(
            decide(&e, &q(Some(11), Some(13)), NOW),
            Decision::BadRequest
        );
    }

    #[test]
    fn the_advance_part_limit_for_long_parts_is_three() {
        let mut e = edge(10, 2);
        e.part_target = Duration::from_millis(1500);
        assert!((e.advance_part_limit() - 3.0).abs() < 1e-9);
        assert!(matches!(
            decide(&e, &q(Some(10), Some(4)), NOW),
            Decision::Wait { .. }
        ));
        assert_eq!(decide(&e, &q(Some(10), Some(5)), NOW), Decision::BadRequest);
    }

    #[test]
    fn waiting_past_three_target_durations_is_503() {
        let mut e = edge(10, 2);
        e.target_duration_secs = 2;
        let query = q(Some(10), Some(3));
        assert_eq!(
            decide(&e, &query, Duration::from_millis(5900)),
            Decision::Wait {
                remaining: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decide(&e, &query, Duration::from_secs(6)),
            Decision::Unavailable
        );
        // If it arrived meanwhile, it is served, however long it took.
        e.open_parts = 4;
        assert_eq!(decide(&e, &query, Duration::from_secs(6)), Decision::Ready);
    }

    #[test]
    fn an_ended_playlist_ignores_the_directives() {
        let mut e = edge(10, 0);
        e.ended = true;
        assert_eq!(decide(&e, &q(Some(11), Some(3)), NOW), Decision::Ready);
        assert_eq!(decide(&e, &q(Some(400), None), NOW), Decision::Ready);
    }
}
