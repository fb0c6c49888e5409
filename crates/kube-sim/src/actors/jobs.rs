//! The Job controller: one pod at a time from the template (pods need their
//! ServiceAccount), succeeded/failed counted from pod phases (a pod deleted before it
//! finished counts as failed), `backoffLimit`, `activeDeadlineSeconds`, the conditions
//! `SuccessCriteriaMet`/`Complete` and `FailureTarget`/`Failed`, and
//! `ttlSecondsAfterFinished`.

use super::{event, name, namespace, owned_by, set_status, terminating, ty, uid};
use crate::store::{now, DeleteOptions, Propagation, State, WriteOptions};
use crate::Shared;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Active,
    Succeeded,
    Failed,
}

/// Per-Job memory the API objects do not hold.
#[derive(Default)]
pub struct JobController {
    /// Pods seen per Job uid, with their last outcome.
    pods: HashMap<String, BTreeMap<String, Outcome>>,
    /// When each Job started and finished.
    started: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({ "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now(), "lastTransitionTime": now() })
}

fn finished(job: &Value) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
    })
}

impl JobController {
    /// One pass over every Job.
    pub fn tick(&mut self, shared: &Shared) {
        shared.with_state(|s| {
            for job in s.all("batch/jobs") {
                self.reconcile(s, &job);
            }
            let alive: Vec<String> = s.all("batch/jobs").iter().map(uid).collect();
            self.pods.retain(|k, _| alive.contains(k));
            self.started.retain(|k, _| alive.contains(k));
            self.finished.retain(|k, _| alive.contains(k));
        });
    }

    fn reconcile(&mut self, s: &mut State, job: &Value) {
        if terminating(job) {
            return;
        }
        let juid = uid(job);
        let ns = namespace(job).unwrap_or_default();
        if finished(job) {
            let at = *self
                .finished
                .entry(juid.clone())
                .or_insert_with(Instant::now);
            if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
                if at.elapsed() >= Duration::from_secs(ttl) {
                    let t = ty(s, "batch/jobs");
                    let opts = DeleteOptions {
                        propagation: Some(Propagation::Background),
                        ..Default::default()
                    };
                    let _ = s.delete(&t, Some(&ns), &name(job), &opts);
                }
            }
            return;
        }
        if job["spec"]["suspend"] == json!(true) {
            return;
        }
        let pods: Vec<Value> = s
            .all("core/pods")
            .into_iter()
            .filter(|p| namespace(p).as_deref() == Some(&ns) && owned_by(p, &juid))
            .collect();
        let seen = self.pods.entry(juid.clone()).or_default();
        for p in &pods {
            let outcome = match p["status"]["phase"].as_str() {
                Some("Succeeded") => Outcome::Succeeded,
                Some("Failed") => Outcome::Failed,
                _ => Outcome::Active,
            };
            let slot = seen.entry(uid(p)).or_insert(outcome);
            if *slot == Outcome::Active {
                *slot = outcome;
            }
        }
        let present: Vec<String> = pods.iter().map(uid).collect();
        for (puid, outcome) in seen.iter_mut() {
            if *outcome == Outcome::Active && !present.contains(puid) {
                *outcome = Outcome::Failed;
            }
        }
        let count = |o: Outcome| seen.values().filter(|x| **x == o).count() as i64;
        let (succeeded, failed) = (count(Outcome::Succeeded), count(Outcome::Failed));
        let active: Vec<&Value> = pods
            .iter()
            .filter(|p| !terminating(p) && seen.get(&uid(p)) == Some(&Outcome::Active))
            .collect();
        let terminating_pods = pods
            .iter()
            .filter(|p| terminating(p) && seen.get(&uid(p)) == Some(&Outcome::Active))
            .count();
        let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
        let backoff = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let started = *self
            .started
            .entry(juid.clone())
            .or_insert_with(Instant::now);
        if status["startTime"].is_null() {
            status["startTime"] = json!(now());
        }
        let deadline = job["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d));
        let failure = if deadline {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else if failed > backoff {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else {
            None
        };
        let mut created = false;
        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        if let Some((reason, message)) = failure {
            let t = ty(s, "core/pods");
            for p in &active {
                let _ = s.delete(&t, Some(&ns), &name(p), &DeleteOptions::default());
            }
            conditions.push(condition("FailureTarget", reason, message));
            conditions.push(condition("Failed", reason, message));
            event(s, job, "Warning", reason, message, "job-controller");
        } else if succeeded >= completions {
            let message = "Reached expected number of succeeded pods";
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                message,
            ));
            conditions.push(condition("Complete", "CompletionsReached", message));
            status["completionTime"] = json!(now());
            event(
                s,
                job,
                "Normal",
                "Completed",
                "Job completed",
                "job-controller",
            );
        } else if active.is_empty() && terminating_pods == 0 {
            created = self.create_pod(s, job);
        }
        status["conditions"] = json!(conditions);
        if conditions.is_empty() {
            status.as_object_mut().unwrap().remove("conditions");
        }
        let still_active = if failure.is_some() || succeeded >= completions {
            0
        } else {
            (active.len() + usize::from(created)) as i64
        };
        status["active"] = json!(still_active);
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["ready"] = json!(active
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count());
        for k in ["active", "succeeded", "failed"] {
            if status[k] == json!(0) {
                status.as_object_mut().unwrap().remove(k);
            }
        }
        if status != job["status"] {
            set_status(s, "batch/jobs", job, status);
        }
    }

    /// Creates the Job's next pod; false when it cannot (no ServiceAccount).
    fn create_pod(&mut self, s: &mut State, job: &Value) -> bool {
        let ns = namespace(job).unwrap_or_default();
        let template = &job["spec"]["template"];
        let sa = template["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let sa_type = ty(s, "core/serviceaccounts");
        if s.get(&sa_type, Some(&ns), &sa).is_err() {
            let message = format!(
                "Error creating: pods \"{}-\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found",
                name(job)
            );
            event(
                s,
                job,
                "Warning",
                "FailedCreate",
                &message,
                "job-controller",
            );
            return false;
        }
        let mut meta = template["metadata"].clone();
        if !meta.is_object() {
            meta = json!({});
        }
        meta["generateName"] = json!(format!("{}-", name(job)));
        meta["namespace"] = json!(ns);
        meta["ownerReferences"] = json!([{ "apiVersion": "batch/v1", "kind": "Job", "name": name(job),
            "uid": uid(job), "controller": true, "blockOwnerDeletion": true }]);
        let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"] });
        let t = ty(s, "core/pods");
        match s.create(&t, Some(&ns), pod, &WriteOptions::default()) {
            Ok(p) => {
                let message = format!("Created pod: {}", name(&p));
                self.pods
                    .entry(uid(job))
                    .or_default()
                    .insert(uid(&p), Outcome::Active);
                event(
                    s,
                    job,
                    "Normal",
                    "SuccessfulCreate",
                    &message,
                    "job-controller",
                );
                true
            }
            Err(e) => {
                let message = format!("Error creating: {}", e.message);
                event(
                    s,
                    job,
                    "Warning",
                    "FailedCreate",
                    &message,
                    "job-controller",
                );
                false
            }
        }
    }
}
