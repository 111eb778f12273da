//! The agent task API, `/api/agent` (docs/TASKS.md).
//!
//! Users call it with their own JWT (they see and change only their tasks); systems with an
//! API key from `[api] keys` or an admin token (every task; they may submit for a user).
//! Answers are `{"success": true, "data": …}`; errors are the API's `{"error": {code,
//! message}}` with 401, 403 (another user's task), 404, 409 (a change the task's state does
//! not allow), 422 (unacceptable values), 429 (`tasks.requests_per_second` per user, or
//! `tasks.max_active_per_user`) and 503 (the store failed).

use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::api::Credential;
use super::error::{resource, ApiError};
use crate::protocol::ErrorCode;
use crate::tasks::manager::{
    Approve, Caller, Cancel, Decision, Detail, Position, Submit, TaskError, TaskManager, Undo,
    Watch,
};
use crate::tasks::store::HistoryQuery;
use crate::tasks::{parse_priority, room_of, TaskStatus};
use crate::Broker;

/// Mounts the routes inside the `/api` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/agent", "POST").route(web::post().to(submit)))
        .service(resource("/agent/history", "GET").route(web::get().to(history)))
        .service(
            resource("/agent/{task_id}", "GET, DELETE")
                .route(web::get().to(get))
                .route(web::delete().to(cancel)),
        )
        .service(resource("/agent/{task_id}/approve", "POST").route(web::post().to(approve)))
        .service(resource("/agent/{task_id}/undo", "POST").route(web::post().to(undo)))
        .service(resource("/agent/{task_id}/events", "GET").route(web::get().to(events)));
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> ApiError {
        let code = match &err {
            TaskError::NotFound(_) => ErrorCode::NotFound,
            TaskError::Forbidden(_) => ErrorCode::Forbidden,
            TaskError::Conflict(_) => ErrorCode::Conflict,
            TaskError::Invalid(_) => ErrorCode::Unprocessable,
            TaskError::TooMany(_) => ErrorCode::RateLimited,
            TaskError::Unavailable(_) => ErrorCode::Unavailable,
        };
        ApiError::new(code, err.to_string())
    }
}

fn ok(data: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"success": true, "data": data}))
}

/// The caller and the manager, or why the request is refused.
async fn admit(
    req: &HttpRequest,
    broker: &Broker,
) -> Result<(Caller, Addr<TaskManager>), ApiError> {
    let state = broker.state();
    let Some(manager) = state.tasks.manager.get().cloned() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the task API is off ([tasks] enabled = false)",
        ));
    };
    let caller = match super::api::credential(req, state, "tasks").await? {
        Credential::Key(i) => Caller {
            name: format!("key#{i}"),
            system: true,
        },
        Credential::Token(claims) if claims.admin => Caller {
            name: format!("admin:{}", claims.sub),
            system: true,
        },
        Credential::Token(claims) => Caller {
            name: claims.sub,
            system: false,
        },
    };
    if let Some(limiter) = &state.tasks.limiter {
        if limiter.check_key(&caller.name).is_err() {
            state
                .metrics
                .rate_limited
                .with_label_values(&["tasks"])
                .inc();
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many task API requests; slow down (tasks.requests_per_second)",
            ));
        }
    }
    Ok((caller, manager))
}

/// The store's read side: reads do not queue behind the manager's commands.
fn reader(broker: &Broker) -> Result<&crate::tasks::ReadPool, ApiError> {
    broker
        .state()
        .tasks
        .reader
        .get()
        .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "the task store is not open"))
}

async fn ask<M>(manager: &Addr<TaskManager>, msg: M) -> Result<M::Result, ApiError>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    TaskManager: actix::Handler<M>,
{
    manager
        .send(msg)
        .await
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the task manager is not running"))
}

/// `POST /api/agent` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubmitRequest {
    /// What to do.
    #[schema(example = "Rename the files in /reports by date")]
    task: String,
    /// `low`, `normal` (default), `high`, `urgent`, or 0-3.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "high")]
    priority: Value,
    /// The conversation the task belongs to.
    #[serde(default)]
    conversation_id: Option<String>,
    /// Anything the worker needs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// For systems: the user the task is for (a user's own token cannot set it).
    #[serde(default)]
    user_id: Option<String>,
}

/// Submits a task: it is queued (`pending`) and its queue position returned.
#[utoipa::path(post, path = "/api/agent", request_body = SubmitRequest,
    responses((status = 201, description = "`{success, data: {task, queuePosition}}`", body = Object,
        example = json!({"success": true, "data": {"task": {"id": "task_1f0c…", "status": "pending"}, "queuePosition": 0}})),
        (status = 401, body = super::api::ErrorBody), (status = 422, body = super::api::ErrorBody),
        (status = 429, body = super::api::ErrorBody)),
    security(("bearer" = [])), tag = "tasks")]
async fn submit(
    req: HttpRequest,
    broker: web::Data<Broker>,
    body: web::Json<SubmitRequest>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let body = body.into_inner();
    if body.task.trim().is_empty() || body.task.len() > 10_000 {
        return Err(ApiError::new(
            ErrorCode::Unprocessable,
            "`task` must be 1 to 10000 bytes",
        ));
    }
    let priority = parse_priority(&body.priority).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unprocessable,
            "`priority` must be low, normal, high, urgent or 0-3",
        )
    })?;
    let owner = match (&body.user_id, caller.system) {
        (Some(user), true) => user.clone(),
        (Some(_), false) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "`userId` is for systems; a user's tasks are their own",
            ))
        }
        (None, _) => caller.name.clone(),
    };
    let (task, position) = ask(
        &manager,
        Submit {
            caller,
            owner,
            task: body.task,
            priority,
            conversation_id: body.conversation_id,
            context: body.context.unwrap_or(json!({})),
        },
    )
    .await??;
    Ok(HttpResponse::Created().json(json!({
        "success": true,
        "data": {"task": task, "queuePosition": position},
    })))
}

/// A task with its steps, approvals, last 100 log lines and current step.
#[utoipa::path(get, path = "/api/agent/{taskId}", params(("taskId" = String, Path)),
    responses((status = 200, description = "`{success, data: {task, steps, approvals, logs, currentExecution?, queuePosition?}}`", body = Object),
        (status = 401, body = super::api::ErrorBody), (status = 403, body = super::api::ErrorBody),
        (status = 404, body = super::api::ErrorBody)),
    security(("bearer" = [])), tag = "tasks")]
async fn get(
    req: HttpRequest,
    broker: web::Data<Broker>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let id = path.into_inner();
    let wanted = id.clone();
    let stored = reader(&broker)?
        .read(move |s| s.snapshot(&wanted, 100))
        .await
        .map_err(TaskError::from)?
        .ok_or_else(|| TaskError::NotFound(format!("no task {id}")))?;
    caller.check(&stored.task)?;
    let position = match stored.task.status {
        TaskStatus::Pending => ask(&manager, Position(id)).await?,
        _ => None,
    };
    Ok(ok(json!(Detail::of(stored, position))))
}

/// `GET /api/agent/history` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct HistoryParams {
    /// Only tasks in this status.
    status: Option<String>,
    /// Page size, 1-100 (default 20).
    limit: Option<u32>,
    /// Tasks to skip.
    offset: Option<u32>,
    /// Created at or after (ms since the epoch).
    date_from: Option<i64>,
    /// Created at or before (ms since the epoch).
    date_to: Option<i64>,
}

/// The caller's tasks, newest first (a system's: everyone's).
#[utoipa::path(get, path = "/api/agent/history", params(HistoryParams),
    responses((status = 200, description = "`{success, data: {tasks, total, limit, offset}}`", body = Object),
        (status = 401, body = super::api::ErrorBody), (status = 422, body = super::api::ErrorBody)),
    security(("bearer" = [])), tag = "tasks")]
async fn history(
    req: HttpRequest,
    broker: web::Data<Broker>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let (caller, _) = admit(&req, &broker).await?;
    let params = params.into_inner();
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::new(ErrorCode::Unprocessable, format!("unknown status `{s}`"))
        })?),
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::Unprocessable,
            "`limit` must be 1-100",
        ));
    }
    let offset = params.offset.unwrap_or(0);
    let query = HistoryQuery {
        // A user sees their own tasks; a system everyone's.
        owner: (!caller.system).then_some(caller.name),
        status,
        from: params.date_from,
        to: params.date_to,
        limit,
        offset,
    };
    let (tasks, total) = reader(&broker)?
        .read(move |s| s.history(&query))
        .await
        .map_err(TaskError::from)?;
    Ok(ok(
        json!({"tasks": tasks, "total": total, "limit": limit, "offset": offset}),
    ))
}

/// Cancels a pending or running task (its worker is told).
#[utoipa::path(delete, path = "/api/agent/{taskId}", params(("taskId" = String, Path)),
    responses((status = 200, description = "`{success, data: {task}}`", body = Object),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody),
        (status = 409, body = super::api::ErrorBody, description = "the task has finished")),
    security(("bearer" = [])), tag = "tasks")]
async fn cancel(
    req: HttpRequest,
    broker: web::Data<Broker>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let task = ask(
        &manager,
        Cancel {
            caller,
            id: path.into_inner(),
        },
    )
    .await??;
    Ok(ok(json!({"task": task})))
}

/// `POST /api/agent/{taskId}/approve` body: one decision, or several decided together.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum ApproveRequest {
    /// `{"decisions": [...]}` or `{"approvalIds": [...], "approved": …}`.
    Batch(BatchApproval),
    /// `{"approvalId", "approved", "message"?, "modifiedParameters"?}`.
    One(Decision),
}

/// Several approval requests decided at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchApproval {
    /// Decisions, each with its own answer.
    #[serde(default)]
    decisions: Vec<Decision>,
    /// Or these requests…
    #[serde(default)]
    approval_ids: Vec<String>,
    /// …all with this answer.
    #[serde(default)]
    approved: Option<bool>,
    /// …and this message.
    #[serde(default)]
    message: Option<String>,
}

/// Decides approval requests; the worker is told, every tab sees the decision.
#[utoipa::path(post, path = "/api/agent/{taskId}/approve", params(("taskId" = String, Path)),
    request_body(content = Object, example = json!({"approvalId": "appr_…", "approved": true, "message": "go ahead"})),
    responses((status = 200, description = "`{success, data: {approvals}}`", body = Object),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody),
        (status = 409, body = super::api::ErrorBody, description = "already decided, or the task has finished"),
        (status = 422, body = super::api::ErrorBody)),
    security(("bearer" = [])), tag = "tasks")]
async fn approve(
    req: HttpRequest,
    broker: web::Data<Broker>,
    path: web::Path<String>,
    body: web::Json<ApproveRequest>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let decisions = match body.into_inner() {
        ApproveRequest::One(decision) => vec![decision],
        ApproveRequest::Batch(batch) => {
            let mut decisions = batch.decisions;
            match (batch.approval_ids.is_empty(), batch.approved) {
                (true, None) => {}
                (false, Some(approved)) => {
                    decisions.extend(batch.approval_ids.into_iter().map(|approval_id| Decision {
                        approval_id,
                        approved,
                        message: batch.message.clone(),
                        modified_parameters: None,
                    }))
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Unprocessable,
                        "`approvalIds` needs `approved`",
                    ))
                }
            }
            decisions
        }
    };
    if decisions.is_empty() {
        return Err(ApiError::new(ErrorCode::Unprocessable, "no decision given"));
    }
    let approvals = ask(
        &manager,
        Approve {
            caller,
            id: path.into_inner(),
            decisions,
        },
    )
    .await??;
    Ok(ok(json!({"approvals": approvals})))
}

/// `POST /api/agent/{taskId}/undo` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UndoRequest {
    /// The step to roll back (default: the last completed one).
    #[serde(default)]
    step_id: Option<String>,
}

/// Asks the task's worker to roll back a completed step; the result arrives as an event.
#[utoipa::path(post, path = "/api/agent/{taskId}/undo", params(("taskId" = String, Path)),
    request_body = UndoRequest,
    responses((status = 202, description = "`{success, data: {stepId, requested: true}}`", body = Object),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody),
        (status = 409, body = super::api::ErrorBody, description = "no worker holds the task")),
    security(("bearer" = [])), tag = "tasks")]
async fn undo(
    req: HttpRequest,
    broker: web::Data<Broker>,
    path: web::Path<String>,
    body: Option<web::Json<UndoRequest>>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let step_id = body.map(|b| b.into_inner()).unwrap_or_default().step_id;
    let step_id = ask(
        &manager,
        Undo {
            caller,
            id: path.into_inner(),
            step_id,
        },
    )
    .await??;
    Ok(HttpResponse::Accepted().json(json!({
        "success": true,
        "data": {"stepId": step_id, "requested": true},
    })))
}

/// `GET /api/agent/{taskId}/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsParams {
    /// Events after this seq (0: from the first).
    since: Option<u64>,
    /// Wait up to this many milliseconds (at most 30000) for an event when there is none.
    wait: Option<u64>,
}

/// The polling fallback: the task's events after `since`, the same as the socket's, each
/// with its `seq`; with `wait`, a long poll.
#[utoipa::path(get, path = "/api/agent/{taskId}/events", params(("taskId" = String, Path), EventsParams),
    responses((status = 200, description = "`{success, data: {events, lastSeq, recovered}}`", body = Object),
        (status = 403, body = super::api::ErrorBody), (status = 404, body = super::api::ErrorBody)),
    security(("bearer" = [])), tag = "tasks")]
async fn events(
    req: HttpRequest,
    broker: web::Data<Broker>,
    path: web::Path<String>,
    params: web::Query<EventsParams>,
) -> Result<HttpResponse, ApiError> {
    let (caller, manager) = admit(&req, &broker).await?;
    let id = path.into_inner();
    let notify = ask(
        &manager,
        Watch {
            caller,
            id: id.clone(),
        },
    )
    .await??;
    let since = params.since.unwrap_or(0);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(params.wait.unwrap_or(0).min(30_000));
    loop {
        // Registered before reading, so an event published in between still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let history = broker
            .history(&room_of(&id), since, 100)
            .await
            .map_err(|e| ApiError::new(e.code, e.message))?;
        let events: Vec<Value> = history
            .messages
            .iter()
            .filter_map(|frame| serde_json::from_str::<Value>(frame).ok())
            .filter_map(|frame| {
                let mut event = frame.get("payload")?.clone();
                event["seq"] = frame.get("seq")?.clone();
                Some(event)
            })
            .collect();
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let last = events
                .last()
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(since);
            return Ok(ok(json!({
                "events": events,
                "lastSeq": last,
                "recovered": history.recovered,
            })));
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// The task API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(submit, get, history, cancel, approve, undo, events),
    components(schemas(SubmitRequest, BatchApproval, Decision, UndoRequest,
        crate::tasks::Task, crate::tasks::Step, crate::tasks::Approval, crate::tasks::LogEntry)),
    tags((name = "tasks", description = "Agent tasks: submit, watch, approve, undo, cancel (docs/TASKS.md)"))
)]
pub struct TasksDoc;
