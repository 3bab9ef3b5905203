//! The one loop that drives the engine, for the daemon (`driver`) and for `replay` alike:
//!
//! 1. read back from the backing what the input needs (the open breaches it may touch, the
//!    finished incident it names);
//! 2. hand it to the engine at `now`;
//! 3. the caller commits the output's changes (sled for the daemon, memory for a replay);
//! 4. let go of what the engine no longer works on, so memory holds the index, not the records;
//! 5. the caller performs the effects (the real executor, or a simulated one);
//! 6. tick at [`Pump::next_wakeup`].
//!
//! What differs between the two callers is only the clock, the backing and the executor.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::engine::{Change, Context, Event, Output, State, breach_id};
use crate::model::{Breach, Incident};
use crate::rules::RuleSet;

/// Where the pump reads back the records it let go of.
pub trait Backing {
    fn breach(&self, id: &str) -> Result<Option<Breach>, String>;
    fn incident(&self, id: &str) -> Result<Option<Incident>, String>;
}

impl Backing for crate::store::Store {
    fn breach(&self, id: &str) -> Result<Option<Breach>, String> {
        crate::store::Store::breach(self, id).map_err(|e| e.to_string())
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, String> {
        crate::store::Store::incident(self, id).map_err(|e| e.to_string())
    }
}

/// A backing in memory: what a replay commits to.
#[derive(Default)]
pub struct Memory {
    breaches: BTreeMap<String, Breach>,
    incidents: BTreeMap<String, Incident>,
}

impl Memory {
    /// Keeps the records of one output, as the store's commit does.
    pub fn commit(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Breach(b) => {
                    self.breaches.insert(b.id.clone(), *b);
                }
                Change::Incident(i) => {
                    self.incidents.insert(i.id.clone(), *i);
                }
                _ => {}
            }
        }
    }

    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    pub fn breaches(&self) -> impl Iterator<Item = &Breach> {
        self.breaches.values()
    }

    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }
}

impl Backing for Memory {
    fn breach(&self, id: &str) -> Result<Option<Breach>, String> {
        Ok(self.breaches.get(id).cloned())
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, String> {
        Ok(self.incidents.get(id).cloned())
    }
}

/// One entry point of the engine.
#[derive(Clone, Debug)]
pub enum Input {
    /// After a start: resume what the records say was under way.
    Recover,
    Event(Event),
}

/// What the engine did with one input, waiting for its commit.
pub struct Handled {
    pub out: Output,
    /// The finished incident read back for it, let go of after the commit.
    pub loaded: Option<String>,
}

pub struct Pump {
    pub state: State,
}

impl Pump {
    pub fn new(state: State) -> Pump {
        Pump { state }
    }

    /// Steps 1 and 2: reads back what `input` needs, then hands it to the engine at `now`. A
    /// read that fails handles nothing: deciding without a breach that is open on disk could
    /// open a second one.
    pub fn handle(
        &mut self,
        backing: &impl Backing,
        ctx: &Context,
        input: Input,
        now: Timestamp,
    ) -> Result<Handled, String> {
        let event = match &input {
            Input::Event(e) => Some(e),
            Input::Recover => None,
        };
        let loaded = self.read_back(backing, ctx.rules, event, now)?;
        let out = match input {
            Input::Recover => self.state.recover(ctx, now),
            Input::Event(e) => self.state.handle(ctx, e, now),
        };
        Ok(Handled { out, loaded })
    }

    /// Step 4, after the commit of `changes` (all of a batch): lets go of every breach and of
    /// the incidents the engine no longer works on; they are durable in the backing and
    /// summarised in the index.
    pub fn let_go(
        &mut self,
        changes: &[Change],
        handled: impl IntoIterator<Item = Option<String>>,
    ) {
        let touched = changes.iter().filter_map(|c| match c {
            Change::Incident(i) => Some(i.id.clone()),
            _ => None,
        });
        let loaded = handled.into_iter().flatten();
        for id in touched.chain(loaded) {
            if self.state.incidents.get(&id).is_some_and(|i| !i.resident()) {
                self.state.incidents.remove(&id);
            }
        }
        self.state.breaches.clear();
    }

    /// Step 6: when the engine next needs a tick.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.state.next_wakeup()
    }

    fn read_back(
        &mut self,
        backing: &impl Backing,
        rules: &RuleSet,
        event: Option<&Event>,
        now: Timestamp,
    ) -> Result<Option<String>, String> {
        for seq in self.state.breaches_needed(rules, event, now) {
            // An agenda entry may name a breach that has closed since: that one stays closed.
            if let Some(b) = backing.breach(&breach_id(seq))?
                && b.closed_at.is_none()
            {
                self.state.breaches.insert(seq, b);
            }
        }
        let Some(id) = event.and_then(|e| self.state.incident_named(e)) else {
            return Ok(None);
        };
        if self.state.incidents.contains_key(id) {
            return Ok(None);
        }
        let id = id.to_string();
        Ok(backing.incident(&id)?.map(|i| {
            self.state.incidents.insert(id.clone(), i);
            id
        }))
    }
}
