//! Fencing for action steps: the first executor in the list. While this replica may act it
//! handles nothing and the step goes on to the executor that carries it out; when it may not —
//! not the leader, or its lease could run out any moment — it takes every step and undo and
//! refuses it, so a deposed leader changes nothing even if an action of its was half way.

use super::Leadership;
use crate::act::ActError;
use crate::act::executor::{Done, Executor, Target, Undo};
use crate::rules::model::Step;
use async_trait::async_trait;

pub struct FenceExecutor(pub Leadership);

#[async_trait]
impl Executor for FenceExecutor {
    fn name(&self) -> &'static str {
        "fence"
    }
    fn handles(&self, _: &Step, _: &Target<'_>) -> bool {
        self.0.may_act().is_err()
    }
    async fn run(&self, _: &Step, t: &Target<'_>) -> Result<Done, ActError> {
        let why = self.0.may_act().err().unwrap_or_else(|| "leadership changed just now".into());
        tracing::warn!(node = t.node, target = t.target, "not running an action step: {why}");
        Err(ActError::Refused(why))
    }
    async fn undo(&self, _: &Undo) -> Option<Result<String, ActError>> {
        self.0.may_act().err().map(|why| Err(ActError::Refused(why)))
    }
}
