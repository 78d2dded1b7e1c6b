//! Declarative resize: from the desired vCPU count (or the exact set of
//! vCPU ids, for a targeted resize) and every id's lifecycle state, decide
//! what to do next. Pure, so it is tested exhaustively without
//! a VM; the manager carries the plan out and calls it again whenever
//! anything changes (a resize, an eject, a rollback, a retired vCPU).

use super::lifecycle::{Phase, State};

/// One step towards the desired count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Removals to take back, if the guest has not picked them up yet: their
    /// vCPUs are wanted again. Lowest ids first.
    pub reclaim: Vec<u32>,
    /// Free ids to hot-add, lowest first.
    pub add: Vec<u32>,
    /// Wanted vCPUs to remove, highest ids first; never vCPU 0.
    pub remove: Vec<u32>,
    /// Ids still being ejected (or stuck) that the count needs once free.
    pub waiting_for: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.reclaim.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// What to do about `desired` given every id's state. `reclaim`: whether
/// to propose taking back pending removals (the manager tries that first,
/// then plans again without, counting the ones it could not take back as
/// still on their way out).
pub fn plan(desired: u32, states: &[State], reclaim: bool) -> Plan {
    let ids = |f: fn(&State) -> bool| -> Vec<u32> {
        states.iter().enumerate().filter(|(_, s)| f(s)).map(|(id, _)| id as u32).collect()
    };
    let wanted = ids(|s| s.is_wanted());
    let desired = desired as usize;
    let mut p = Plan::default();
    if wanted.len() < desired {
        let mut deficit = desired - wanted.len();
        let removing = ids(|s| s.phase == Phase::Removing);
        if reclaim {
            p.reclaim = removing.iter().copied().take(deficit).collect();
            deficit -= p.reclaim.len();
        }
        p.add = ids(|s| s.is_free()).into_iter().take(deficit).collect();
        deficit -= p.add.len();
        if deficit > 0 {
            // Only ids on their way out can still become free.
            let leaving = ids(|s| matches!(s.phase, Phase::Ejected | Phase::Stuck));
            p.waiting_for = removing.iter().skip(p.reclaim.len()).chain(&leaving).copied().take(deficit).collect();
        }
    } else if wanted.len() > desired {
        let surplus = wanted.len() - desired;
        p.remove = wanted.into_iter().rev().filter(|&id| id != 0).take(surplus).collect();
    }
    p
}

/// What to do about the exact set `ids` (sorted; the API checks it holds
/// vCPU 0 and only ids below max): take back or add the ids in it, remove
/// the wanted ones outside it. The same steps as [`plan`], with the ids
/// chosen by the caller instead of by "lowest free" / "highest wanted".
pub fn plan_ids(ids: &[u32], states: &[State], reclaim: bool) -> Plan {
    let in_set = |id: u32| ids.binary_search(&id).is_ok();
    let with = |f: fn(&State) -> bool, inside: bool| -> Vec<u32> {
        states
            .iter()
            .enumerate()
            .filter(|&(id, s)| f(s) && in_set(id as u32) == inside)
            .map(|(id, _)| id as u32)
            .collect()
    };
    let mut p = Plan::default();
    let removing = with(|s| s.phase == Phase::Removing, true);
    if reclaim {
        p.reclaim = removing.clone();
    }
    p.add = with(|s| s.is_free(), true);
    p.waiting_for = removing
        .iter()
        .filter(|id| !p.reclaim.contains(id))
        .copied()
        .chain(with(|s| matches!(s.phase, Phase::Ejected | Phase::Stuck), true))
        .collect();
    p.waiting_for.sort_unstable();
    p.remove = with(|s| s.is_wanted(), false).into_iter().rev().filter(|&id| id != 0).collect();
    p
}

/// The state has converged on exactly the ids in `ids`.
pub fn converged_ids(ids: &[u32], states: &[State]) -> bool {
    states.iter().enumerate().all(|(id, s)| s.is_wanted() == ids.binary_search(&(id as u32)).is_ok())
        && states.iter().all(|s| !s.is_settling() && s.phase != Phase::Stuck)
}

/// The state has converged on `desired`: that many wanted vCPUs, each of
/// them running, and nothing on its way in or out.
pub fn converged(desired: u32, states: &[State]) -> bool {
    let wanted = states.iter().filter(|s| s.is_wanted()).count();
    wanted == desired as usize && states.iter().all(|s| !s.is_settling() && s.phase != Phase::Stuck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::lifecycle::{step, Event};

    fn states(phases: &[Phase]) -> Vec<State> {
        phases
            .iter()
            .map(|&p| match p {
                Phase::Removing => step(State::new(Phase::Running), Event::Remove).unwrap(),
                p => State::new(p),
            })
            .collect()
    }

    use Phase::*;

    #[test]
    fn up_uses_the_lowest_free_ids() {
        let s = states(&[Running, Parked, Absent, Absent]);
        assert_eq!(plan(3, &s, true), Plan { add: vec![1, 2], ..Plan::default() });
    }

    #[test]
    fn down_removes_the_highest_wanted_ids_never_zero() {
        let s = states(&[Running, Running, Adding, Acknowledged]);
        assert_eq!(plan(2, &s, true), Plan { remove: vec![3, 2], ..Plan::default() });
        assert_eq!(plan(1, &s, true).remove, vec![3, 2, 1]);
        let s = states(&[Running, Removing, Running]);
        assert_eq!(plan(1, &s, true).remove, vec![2]);
    }

    #[test]
    fn up_while_removals_are_pending_reclaims_first_then_waits() {
        // 4 -> 1 in progress, then 3: take two removals back if the guest has
        // not picked them up; the manager re-plans after trying.
        let s = states(&[Running, Removing, Removing, Removing]);
        assert_eq!(plan(3, &s, true), Plan { reclaim: vec![1, 2], ..Plan::default() });
        // the guest had picked them up (reclaim failed): nothing free, wait.
        assert_eq!(plan(3, &s, false), Plan { waiting_for: vec![1, 2], ..Plan::default() });
        let s = states(&[Running, Removing, Ejected, Removing, Parked]);
        let p = plan(4, &s, true);
        assert_eq!(p.reclaim, vec![1, 3]);
        assert_eq!(p.add, vec![4]);
        assert!(p.waiting_for.is_empty());
        // free ids are used rather than waiting
        let p = plan(4, &s, false);
        assert_eq!((p.add, p.waiting_for), (vec![4], vec![1, 3]));
        let s = states(&[Running, Ejected, Stuck]);
        assert_eq!(plan(3, &s, true).waiting_for, vec![1, 2]);
    }

    #[test]
    fn the_same_count_again_plans_nothing() {
        let s = states(&[Running, Running, Removing, Parked]);
        assert!(plan(2, &s, true).is_empty());
        assert!(!converged(2, &s), "a removal is still in flight");
        let s = states(&[Running, Running, Parked, Absent]);
        assert!(converged(2, &s));
        assert!(!converged(2, &states(&[Running, Acknowledged])), "acknowledged is not running");
    }

    #[test]
    fn a_targeted_plan_adds_and_removes_exactly_the_named_ids() {
        let s = states(&[Running, Running, Absent, Parked, Absent, Running]);
        let p = plan_ids(&[0, 4], &s, true);
        assert_eq!(p, Plan { add: vec![4], remove: vec![5, 1], ..Plan::default() });
        // ids being ejected are taken back, or waited for
        let s = states(&[Running, Removing, Ejected, Absent]);
        assert_eq!(plan_ids(&[0, 1, 2], &s, true), Plan { reclaim: vec![1], waiting_for: vec![2], ..Plan::default() });
        assert_eq!(plan_ids(&[0, 1, 2], &s, false), Plan { waiting_for: vec![1, 2], ..Plan::default() });
        // vCPU 0 is never removed, even if the set leaves it out
        assert!(plan_ids(&[1], &states(&[Running, Absent]), true).remove.is_empty());
        let s = states(&[Running, Absent, Running]);
        assert!(plan_ids(&[0, 2], &s, true).is_empty());
        assert!(converged_ids(&[0, 2], &s));
        assert!(!converged_ids(&[0, 1], &s));
    }

    /// Carrying out any plan (reclaims failing or not) never overshoots:
    /// wanted + added - removed == desired whenever enough ids are free.
    #[test]
    fn plans_never_overshoot() {
        let phases = [Absent, Adding, Acknowledged, Running, Removing, Ejected, Parked, Stuck];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..if cfg!(miri) { 300 } else { 20_000 } {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + (seed % 9) as usize;
            let mut ph: Vec<Phase> = (0..n).map(|i| phases[((seed >> (i * 3 + 8)) % 8) as usize]).collect();
            ph[0] = Running;
            let s = states(&ph);
            let desired = 1 + ((seed >> 40) % n as u64) as u32;
            let p = plan(desired, &s, seed & 1 == 0);
            let wanted = s.iter().filter(|s| s.is_wanted()).count();
            let after = wanted + p.reclaim.len() + p.add.len() - p.remove.len();
            assert!(after <= desired as usize || p.remove.len() == wanted - 1, "{ph:?} -> {desired}: {p:?}");
            if wanted > desired as usize {
                assert_eq!(after, desired as usize, "{ph:?} -> {desired}: {p:?}");
            }
            assert!(!p.remove.contains(&0));
            for id in &p.add {
                assert!(s[*id as usize].is_free());
            }
        }
    }
}
