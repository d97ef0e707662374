//! Reading the audit trail: verification and per-task traces.

use custos_audit::VerifyReport;
use custos_core::clock::rfc3339;
use custos_core::operator::Permission;
use serde_json::{Value, json};

use crate::operators::Operator;
use crate::{Broker, BrokerError};

impl Broker {
    /// Re-reads every stored record and checks the chain.
    ///
    /// # Errors
    /// [`BrokerError::Forbidden`] without the audit permission; [`BrokerError::Unavailable`]
    /// when the store cannot be read.
    pub async fn verify_audit(&self, op: &Operator) -> Result<VerifyReport, BrokerError> {
        op.require(Permission::Audit)?;
        let head = self.inner.audit.last_written();
        Ok(custos_audit::verify(&self.inner.store, head.as_ref()).await?)
    }

    /// The whole chain of one task: who started it, for whom, which agent under which
    /// template, and every record under it in order.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] for an unknown task.
    pub async fn trace(
        &self,
        op: &Operator,
        task_id: &custos_core::TaskId,
    ) -> Result<Value, BrokerError> {
        op.require(Permission::Audit)?;
        let task = self
            .inner
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("task `{task_id}` not found")))?;
        let records = self.inner.store.audit_for_task(task_id.as_str()).await?;
        let records: Vec<Value> = records
            .into_iter()
            .map(|r| {
                let mut v = json!(r);
                v["time"] = rfc3339(r.at).into();
                // The detail is stored as JSON text; the trace shows it as the object it is.
                if let Some(d) = r
                    .detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                {
                    v["detail"] = d;
                }
                v
            })
            .collect();
        Ok(json!({
            "task": {
                "id": task.id,
                "state": task.state,
                "agent": task.agent,
                "template": task.template,
                "template_version": task.template_version,
                "initiator": task.on_behalf_of,
                "started_by": task.started_by,
                "purpose": task.purpose,
                "created": rfc3339(task.created_at),
                "expires": rfc3339(task.expires_at),
                "ended": task.ended_at.map(rfc3339),
                "ended_by": task.ended_by,
            },
            "records": records,
        }))
    }
}
