//! Which simulcast layer one viewer should receive: the best layer its
//! bandwidth carries, capped by what it asked for, among the layers the
//! publisher is actually sending. Down at once under congestion, up only
//! after the estimate has allowed it for a while (hysteresis), so the
//! picture does not oscillate. Pure logic, driven by injected time.

use std::time::{Duration, Instant};

/// What the room knows of one layer now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LayerInfo {
    /// Measured bitrate of the layer, bits per second.
    pub bitrate: u64,
    /// Picture height, when a keyframe has told us (0: unknown).
    pub height: u32,
    /// Whether the publisher sent this layer recently.
    pub active: bool,
}

/// What the viewer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCap {
    /// Whatever its bandwidth allows.
    #[default]
    Auto,
    /// At most this layer (by index into the track's layers).
    Layer(usize),
    /// At most this picture height.
    MaxHeight(u32),
}

/// How long an upgrade must stay possible before it happens.
pub const UPGRADE_AFTER: Duration = Duration::from_secs(2);
/// Share of the estimate a layer may use when going up.
pub const UP_HEADROOM: f64 = 0.85;
/// Share of the estimate the current layer may use before we go down.
const DOWN_THRESHOLD: f64 = 1.0;
/// Share of the estimate the layer gone down to may use. A delay-based
/// estimate lags a sudden cut (it first fell to ~720 kbit/s on a 350 kbit/s
/// link, docs/benchmarks.md): going down to what fits half of it takes one
/// step, each step costing the viewer a keyframe's wait.
const DOWN_SHARE: f64 = 0.5;

/// The bandwidth ceiling for a viewer whose link is losing packets: what
/// got through (`delivered`, bits/s: the rate sent less the share the
/// viewer reported lost), and never more than half the layer it loses
/// packets on (`current`, bits/s), so a cut well below the current layer
/// moves straight to the layer that fits rather than one step at a time.
pub fn congestion_cap(current: u64, delivered: Option<u64>) -> u64 {
    let half = current / 2;
    delivered.map_or(half, |d| d.min(half))
}

#[derive(Debug, Default)]
pub struct LayerSelector {
    cap: LayerCap,
    chosen: Option<usize>,
    upgrade_since: Option<Instant>,
}

impl LayerSelector {
    pub fn cap(&self) -> LayerCap {
        self.cap
    }

    /// A viewer's request takes effect at the next choice, without the
    /// upgrade hold: the person asked for it.
    pub fn set_cap(&mut self, cap: LayerCap) {
        self.cap = cap;
        self.upgrade_since = None;
        self.chosen = None;
    }

    /// The layer to receive now. `layers` are in the track's order; quality
    /// is judged by height, then bitrate. `estimate` is the viewer's
    /// available bandwidth for this track (bits/s), `None` while unknown.
    pub fn choose(
        &mut self,
        now: Instant,
        layers: &[LayerInfo],
        estimate: Option<u64>,
    ) -> Option<usize> {
        let mut ranked: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].active).collect();
        if ranked.is_empty() {
            return self.chosen; // nothing flows: keep waiting where we are
        }
        // Best first.
        ranked.sort_by(|&a, &b| {
            (layers[b].height, layers[b].bitrate).cmp(&(layers[a].height, layers[a].bitrate))
        });
        let allowed = self.allowed(&ranked, layers);
        let fits = |i: usize, share: f64| match estimate {
            None => true,
            Some(e) => (layers[i].bitrate as f64) <= e as f64 * share,
        };
        let lowest = *allowed.last().expect("allowed is never empty");
        let best_fitting = |share: f64| {
            allowed
                .iter()
                .copied()
                .find(|&i| fits(i, share))
                .unwrap_or(lowest)
        };

        let current = self.chosen.filter(|c| allowed.contains(c));
        let choice = match current {
            // First choice, or the current layer stopped / is no longer allowed.
            None => best_fitting(UP_HEADROOM),
            Some(c) if !fits(c, DOWN_THRESHOLD) => {
                self.upgrade_since = None;
                best_fitting(DOWN_SHARE)
            }
            Some(c) => {
                let candidate = best_fitting(UP_HEADROOM);
                let rank = |i: usize| allowed.iter().position(|&x| x == i).unwrap_or(usize::MAX);
                if rank(candidate) < rank(c) {
                    let since = *self.upgrade_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= UPGRADE_AFTER {
                        self.upgrade_since = None;
                        candidate
                    } else {
                        c
                    }
                } else {
                    self.upgrade_since = None;
                    c
                }
            }
        };
        self.chosen = Some(choice);
        self.chosen
    }

    /// The active layers the cap allows, best first; never empty when
    /// `ranked` is not (a cap below every layer gets the lowest).
    fn allowed(&self, ranked: &[usize], layers: &[LayerInfo]) -> Vec<usize> {
        let allowed: Vec<usize> = match self.cap {
            LayerCap::Auto => ranked.to_vec(),
            LayerCap::Layer(want) => match ranked.iter().position(|&i| i == want) {
                Some(p) => ranked[p..].to_vec(),
                // The asked layer is not flowing: the best one below it by
                // bitrate, else whatever flows.
                None => {
                    let limit = layers.get(want).map(|l| l.bitrate).unwrap_or(u64::MAX);
                    let below: Vec<usize> = ranked
                        .iter()
                        .copied()
                        .filter(|&i| layers[i].bitrate <= limit)
                        .collect();
                    if below.is_empty() {
                        ranked.to_vec()
                    } else {
                        below
                    }
                }
            },
            LayerCap::MaxHeight(h) => ranked
                .iter()
                .copied()
                .filter(|&i| layers[i].height == 0 || layers[i].height <= h)
                .collect(),
        };
        if allowed.is_empty() {
            vec![*ranked.last().expect("ranked is not empty")]
        } else {
            allowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h / m / l as a browser sends them (track order h, m, l).
    fn three() -> Vec<LayerInfo> {
        vec![
            LayerInfo {
                bitrate: 1_500_000,
                height: 720,
                active: true,
            },
            LayerInfo {
                bitrate: 500_000,
                height: 360,
                active: true,
            },
            LayerInfo {
                bitrate: 150_000,
                height: 180,
                active: true,
            },
        ]
    }

    #[test]
    fn best_layer_without_an_estimate_and_by_quality_not_order() {
        let t0 = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &three(), None), Some(0));
        // Layers listed low to high (rids q;h;f): still the best one.
        let mut rev = three();
        rev.reverse();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &rev, None), Some(2));
    }

    #[test]
    fn goes_down_at_once_and_up_only_after_the_hold() {
        let t0 = Instant::now();
        let l = three();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &l, Some(5_000_000)), Some(0));
        // Congestion: 1 Mbps cannot carry 1.5 Mbps; straight to m.
        assert_eq!(
            s.choose(t0 + Duration::from_millis(100), &l, Some(1_000_000)),
            Some(1)
        );
        // (An estimate that may still be falling: down to what fits half.)
        let mut s2 = LayerSelector::default();
        assert_eq!(s2.choose(t0, &l, Some(5_000_000)), Some(0));
        assert_eq!(
            s2.choose(t0 + Duration::from_millis(100), &l, Some(900_000)),
            Some(2)
        );
        // Deep congestion: l.
        assert_eq!(
            s.choose(t0 + Duration::from_millis(200), &l, Some(300_000)),
            Some(2)
        );
        // Bandwidth is back: hold before going up...
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.choose(t1, &l, Some(5_000_000)), Some(2));
        assert_eq!(
            s.choose(t1 + Duration::from_millis(1900), &l, Some(5_000_000)),
            Some(2)
        );
        // ...then up, to the best layer that fits.
        assert_eq!(s.choose(t1 + UPGRADE_AFTER, &l, Some(5_000_000)), Some(0));
    }

    #[test]
    fn a_congestion_cap_from_what_got_through_is_one_step_down() {
        let t0 = Instant::now();
        let l = three();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &l, Some(5_000_000)), Some(0));
        // 1.5 Mbit/s sent into a 350 kbit/s link, ~75% reported lost.
        let cap = congestion_cap(1_500_000, Some(375_000));
        assert_eq!(cap, 375_000);
        assert_eq!(
            s.choose(t0 + Duration::from_millis(100), &l, Some(cap)),
            Some(2)
        );
        // Without a loss report: half the current layer.
        assert_eq!(congestion_cap(1_500_000, None), 750_000);
        // Light loss never raises the cap above half the layer.
        assert_eq!(congestion_cap(1_500_000, Some(1_400_000)), 750_000);
    }

    #[test]
    fn a_dip_during_the_hold_restarts_it() {
        let t0 = Instant::now();
        let l = three();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &l, Some(600_000)), Some(1));
        assert_eq!(
            s.choose(t0 + Duration::from_millis(500), &l, Some(3_000_000)),
            Some(1)
        );
        // Not enough for h any more: the hold restarts.
        assert_eq!(
            s.choose(t0 + Duration::from_millis(1500), &l, Some(700_000)),
            Some(1)
        );
        assert_eq!(
            s.choose(t0 + Duration::from_millis(2600), &l, Some(3_000_000)),
            Some(1)
        );
        assert_eq!(
            s.choose(t0 + Duration::from_millis(4000), &l, Some(3_000_000)),
            Some(1)
        );
        assert_eq!(
            s.choose(t0 + Duration::from_millis(4700), &l, Some(3_000_000)),
            Some(0)
        );
    }

    #[test]
    fn no_oscillation_near_a_boundary() {
        // The estimate wobbles around h's bitrate: staying on m is right,
        // and the choice must not flip back and forth.
        let t0 = Instant::now();
        let l = three();
        let mut s = LayerSelector::default();
        let mut switches = 0;
        let mut last = s.choose(t0, &l, Some(1_600_000));
        for i in 1..100u64 {
            let e = if i % 2 == 0 { 1_450_000 } else { 1_750_000 };
            let c = s.choose(t0 + Duration::from_millis(i * 200), &l, Some(e));
            if c != last {
                switches += 1;
            }
            last = c;
        }
        assert!(switches <= 1, "switched {switches} times");
    }

    #[test]
    fn falls_back_when_a_layer_stops_and_returns_when_it_comes_back() {
        let t0 = Instant::now();
        let mut l = three();
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &l, Some(5_000_000)), Some(0));
        l[0].active = false; // the browser dropped its top layer
        assert_eq!(
            s.choose(t0 + Duration::from_millis(10), &l, Some(5_000_000)),
            Some(1)
        );
        l[0].active = true;
        assert_eq!(
            s.choose(t0 + Duration::from_millis(20), &l, Some(5_000_000)),
            Some(1)
        );
        assert_eq!(
            s.choose(
                t0 + Duration::from_millis(20) + UPGRADE_AFTER,
                &l,
                Some(5_000_000)
            ),
            Some(0)
        );
        // Nothing flows at all: keep the last choice.
        let off: Vec<LayerInfo> = l
            .iter()
            .map(|x| LayerInfo {
                active: false,
                ..*x
            })
            .collect();
        assert_eq!(s.choose(t0 + Duration::from_secs(9), &off, None), Some(0));
    }

    #[test]
    fn caps_by_layer_and_by_height() {
        let t0 = Instant::now();
        let l = three();
        let mut s = LayerSelector::default();
        s.set_cap(LayerCap::Layer(2));
        assert_eq!(s.choose(t0, &l, Some(10_000_000)), Some(2));
        s.set_cap(LayerCap::Layer(1));
        assert_eq!(
            s.choose(t0 + Duration::from_millis(1), &l, Some(10_000_000)),
            Some(1)
        );
        s.set_cap(LayerCap::MaxHeight(400));
        assert_eq!(
            s.choose(t0 + Duration::from_millis(2), &l, Some(10_000_000)),
            Some(1)
        );
        s.set_cap(LayerCap::MaxHeight(100)); // below every layer: the lowest
        assert_eq!(s.choose(t0 + Duration::from_millis(3), &l, None), Some(2));
        // A capped layer that stops: the best one below it.
        let mut l2 = three();
        l2[1].active = false;
        s.set_cap(LayerCap::Layer(1));
        assert_eq!(
            s.choose(t0 + Duration::from_millis(4), &l2, Some(10_000_000)),
            Some(2)
        );
        // Back to auto: the best layer the bandwidth carries, at once.
        s.set_cap(LayerCap::Auto);
        assert_eq!(
            s.choose(t0 + Duration::from_millis(5), &l, Some(10_000_000)),
            Some(0)
        );
        s.set_cap(LayerCap::Auto);
        assert_eq!(
            s.choose(t0 + Duration::from_millis(6), &l, Some(1_000_000)),
            Some(1)
        );
    }

    #[test]
    fn single_layer_tracks_always_get_it() {
        let t0 = Instant::now();
        let one = vec![LayerInfo {
            bitrate: 2_000_000,
            height: 720,
            active: true,
        }];
        let mut s = LayerSelector::default();
        assert_eq!(s.choose(t0, &one, Some(100_000)), Some(0));
        assert_eq!(s.choose(t0, &[], Some(100_000)), Some(0));
    }
}
