//! User confirmation of a risky action: when the policy's confirmation rule
//! says so ([`Decision::confirmation_required`](super::Decision::confirmation_required)),
//! [`Guarded`](super::Guarded) asks the user through MCP elicitation before
//! the inner handler runs (MCP 2026-07-28 multi round-trip requests).
//!
//! 1. The first request (no `requestState`): the answer is an
//!    `InputRequiredResult` with one `elicitation/create` form request under
//!    the key `confirm` (one required boolean field `confirm`) and a sealed
//!    `requestState` bound to the caller, the method, the name and a hash of
//!    the arguments ([`StateBinding`]), valid for the sealer's TTL and once.
//! 2. The retry carries that `requestState` and `inputResponses.confirm`, an
//!    `ElicitResult`. The state is opened (tampered, expired, replayed, made
//!    for another caller or other arguments: a JSON-RPC error, nothing runs).
//!    `action: "accept"` with `content.confirm == true` runs the inner
//!    handler (without `requestState` / `inputResponses`); a declined or
//!    cancelled elicitation, or `confirm: false`, is refused ("not
//!    confirmed"), nothing runs. A retry whose state opens but that carries
//!    no answer is asked again.
//!
//! In a 2025-era session (stateful serving, the session bound to its
//! caller), a client that declared form elicitation in `initialize` is asked
//! with an `elicitation/create` request inside the session, and the call
//! waits for the answer (at most 300 s).
//!
//! Any other client (one that does not declare form elicitation, a 2025-era
//! client served statelessly) is refused with a JSON-RPC error ([`PERMISSION_DENIED`](crate::PERMISSION_DENIED), data
//! `{"error": "confirmation_required"}`): the action never runs unconfirmed.
//!
//! Each step emits one `confirmation` audit event (`asked`, `granted`,
//! `refused`).

use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{
    ClientCapabilities, ClientResult, ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction,
    ElicitationSchema, InputRequest, InputRequests, InputRequiredResult, InputResponses, ProtocolVersion,
    ServerRequest,
};
use rmcp::service::{RequestContext, RoleServer};
use serde::{Deserialize, Serialize};

use super::action::Action;
use crate::Principal;
use crate::audit::AuditEvent;
use crate::error::PERMISSION_DENIED;
use crate::state::{RequestStateSealer, StateBinding, StateError};

/// How long a confirmation asked inside a 2025-era session waits for the
/// user's answer.
const SESSION_ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The key of the confirmation in `inputRequests` / `inputResponses`, and the
/// name of its boolean form field.
pub(crate) const CONFIRM_KEY: &str = "confirm";

/// What the sealed `requestState` of a confirmation holds: only its purpose
/// (the binding says who, what and with which arguments), so a state sealed
/// for anything else by the same keys is never taken for a confirmation.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Asked {
    purpose: String,
}

const PURPOSE: &str = "rmcp-guard/confirm";

/// Where a confirmation stands for one request.
#[derive(Debug)]
pub(crate) enum Confirmation {
    /// The user confirmed: run the inner handler.
    Granted,
    /// Answer this to ask the user.
    Ask(Box<InputRequiredResult>),
    /// The user declined, cancelled or said no: nothing runs.
    Refused,
}

/// The steps of the `confirmation` audit event.
#[derive(Debug, Clone, Copy)]
enum Step {
    Asked,
    Granted,
    Refused,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Asked => "asked",
            Step::Granted => "granted",
            Step::Refused => "refused",
        }
    }
}

/// The request being confirmed.
pub(crate) struct Pending<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) action: &'a Action,
    /// The tool, prompt or resource.
    pub(crate) name: &'a str,
    pub(crate) binding: StateBinding<'a>,
    /// The request arrived in a session the binding layer checked belongs
    /// to the caller (MCP 2025-era, stateful serving).
    pub(crate) in_session: bool,
}

impl Pending<'_> {
    fn audit(&self, step: Step, reason: &str) {
        AuditEvent::Confirmation {
            principal: self.principal,
            resource: self.name,
            action: self.action.as_str(),
            step: step.as_str(),
            reason,
        }
        .emit();
    }

    /// Decide where the confirmation of this request stands, from the
    /// `requestState` and `inputResponses` it carries.
    pub(crate) async fn confirm(
        &self,
        sealer: &RequestStateSealer,
        request_state: Option<String>,
        input_responses: Option<InputResponses>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Confirmation, ErrorData> {
        if !can_elicit(context) {
            if self.in_session && elicits_in_session(context) {
                return self.ask_in_session(context).await;
            }
            self.audit(Step::Refused, "no_elicitation");
            return Err(ErrorData::new(
                PERMISSION_DENIED,
                format!(
                    "`{}` needs the user's confirmation: the client must support elicitation \
                     (form mode) on MCP 2026-07-28",
                    self.name
                ),
                Some(serde_json::json!({ "error": "confirmation_required" })),
            ));
        }
        let Some(sealed) = request_state else {
            return self.ask(sealer);
        };
        match sealer.open::<Asked>(&sealed, &self.binding).await {
            Ok(asked) if asked.purpose == PURPOSE => {}
            Ok(_) => {
                self.audit(Step::Refused, StateError::Mismatch.code());
                return Err(StateError::Mismatch.into());
            }
            Err(error) => {
                self.audit(Step::Refused, error.code());
                return Err(error.into());
            }
        }
        let Some(answer) = input_responses.as_ref().and_then(|r| r.get(CONFIRM_KEY)) else {
            // The state was good but the answer is missing: ask again
            // (MRTR: request missing input rather than fail).
            return self.ask(sealer);
        };
        if confirmed(answer) {
            self.audit(Step::Granted, "");
            Ok(Confirmation::Granted)
        } else {
            self.audit(Step::Refused, "declined");
            Ok(Confirmation::Refused)
        }
    }

    fn ask(&self, sealer: &RequestStateSealer) -> Result<Confirmation, ErrorData> {
        let state = sealer.seal(
            &self.binding,
            &Asked {
                purpose: PURPOSE.to_owned(),
            },
        )?;
        let mut requests = InputRequests::new();
        requests.insert(CONFIRM_KEY.to_owned(), elicitation(self.action, self.name)?);
        self.audit(Step::Asked, "");
        Ok(Confirmation::Ask(Box::new(InputRequiredResult::new(
            Some(requests),
            Some(state),
        ))))
    }

    /// MCP 2025-era session: ask with an `elicitation/create` request to the
    /// client inside the session and wait for the answer (at most
    /// [`SESSION_ANSWER_TIMEOUT`]). No state is needed: the session is bound
    /// to the caller and the answer arrives within this request.
    async fn ask_in_session(&self, context: &RequestContext<RoleServer>) -> Result<Confirmation, ErrorData> {
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(form(self.action, self.name)?));
        self.audit(Step::Asked, "");
        let answer = tokio::time::timeout(SESSION_ANSWER_TIMEOUT, context.peer.send_request(request)).await;
        match answer {
            Ok(Ok(ClientResult::ElicitResult(result))) if accepted(&result) => {
                self.audit(Step::Granted, "");
                Ok(Confirmation::Granted)
            }
            Ok(Ok(ClientResult::ElicitResult(_))) => {
                self.audit(Step::Refused, "declined");
                Ok(Confirmation::Refused)
            }
            // A wrong answer, an error, a closed session or no answer in time.
            Ok(_) | Err(_) => {
                self.audit(Step::Refused, "no_answer");
                Err(ErrorData::new(
                    PERMISSION_DENIED,
                    format!(
                        "`{}` needs the user's confirmation, and the client did not answer",
                        self.name
                    ),
                    Some(serde_json::json!({ "error": "confirmation_required" })),
                ))
            }
        }
    }

    /// The tool error a refused confirmation of a tool call answers.
    pub(crate) fn refused_message(&self) -> String {
        format!(
            "not confirmed: the user did not confirm `{}`; nothing was done",
            self.name
        )
    }

    /// The JSON-RPC error a refused confirmation of anything but a tool
    /// call answers.
    pub(crate) fn refused_error(&self) -> ErrorData {
        ErrorData::new(
            PERMISSION_DENIED,
            self.refused_message(),
            Some(serde_json::json!({ "error": "not_confirmed" })),
        )
    }
}

/// The JSON-RPC error for an allowed request the policy wants confirmed
/// where no confirmation can be asked (a `#[require_permission]` check, a
/// subscription, a custom method...): refused, audited.
pub(crate) fn unconfirmable(principal: &Principal, action: &Action, resource: &str) -> ErrorData {
    AuditEvent::Confirmation {
        principal,
        resource,
        action: action.as_str(),
        step: Step::Refused.as_str(),
        reason: "unconfirmable",
    }
    .emit();
    ErrorData::new(
        PERMISSION_DENIED,
        format!("`{resource}` needs the user's confirmation, which this request cannot ask for"),
        Some(serde_json::json!({ "error": "confirmation_required" })),
    )
}

/// Whether the client of a 2025-era session declared form elicitation in
/// its `initialize`.
fn elicits_in_session(context: &RequestContext<RoleServer>) -> bool {
    context.meta.protocol_version().is_none()
        && context.peer.peer_info().is_some_and(|info| {
            info.protocol_version.as_str() < ProtocolVersion::V_2026_07_28.as_str() && elicits_forms(&info.capabilities)
        })
}

/// Whether the request is MCP 2026-07-28 (or newer) from a client that
/// declares form elicitation (an `elicitation` capability with `form`, or
/// an empty one, which means form).
fn can_elicit(context: &RequestContext<RoleServer>) -> bool {
    let stateless = context
        .meta
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
    stateless && context.meta.client_capabilities().as_ref().is_some_and(elicits_forms)
}

fn elicits_forms(capabilities: &ClientCapabilities) -> bool {
    capabilities
        .elicitation
        .as_ref()
        .is_some_and(|e| e.form.is_some() || e.url.is_none())
}

/// An accepted `ElicitResult` whose `content.confirm` is `true`; anything
/// else (declined, cancelled, `false`, malformed) is not a confirmation.
fn confirmed(answer: &serde_json::Value) -> bool {
    serde_json::from_value::<ElicitResult>(answer.clone()).is_ok_and(|result| accepted(&result))
}

fn accepted(result: &ElicitResult) -> bool {
    result.action == ElicitationAction::Accept
        && result
            .content
            .as_ref()
            .and_then(|c| c.get(CONFIRM_KEY))
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

/// The `elicitation/create` form asking the user to confirm.
fn elicitation(action: &Action, name: &str) -> Result<InputRequest, ErrorData> {
    Ok(InputRequest::Elicitation(ElicitRequest::new(form(action, name)?)))
}

/// The parameters of the form: one required boolean `confirm`.
fn form(action: &Action, name: &str) -> Result<ElicitRequestParams, ErrorData> {
    let what = match action {
        Action::CallTool => "run the tool",
        Action::GetPrompt => "get the prompt",
        Action::ReadResource => "read the resource",
        _ => "do",
    };
    let schema = ElicitationSchema::builder()
        .title("Confirm")
        .required_bool_with(CONFIRM_KEY, |b| {
            b.title("Confirm")
                .description(format!("Allow the assistant to {what} `{name}` now"))
                .with_default(false)
        })
        .build()
        .map_err(|e| ErrorData::internal_error(format!("confirmation form: {e}"), None))?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: format!("The assistant wants to {what} `{name}`. Do you confirm?"),
        requested_schema: schema,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accepted_true_confirms() {
        assert!(confirmed(
            &serde_json::json!({"action": "accept", "content": {"confirm": true}})
        ));
        for answer in [
            serde_json::json!({"action": "accept", "content": {"confirm": false}}),
            serde_json::json!({"action": "accept", "content": {"confirm": "true"}}),
            serde_json::json!({"action": "accept"}),
            serde_json::json!({"action": "decline", "content": {"confirm": true}}),
            serde_json::json!({"action": "cancel"}),
            serde_json::json!(true),
        ] {
            assert!(!confirmed(&answer), "{answer}");
        }
    }

    #[test]
    fn the_form_has_one_required_boolean_confirm() {
        let request = serde_json::to_value(elicitation(&Action::CallTool, "deploy_template").unwrap()).unwrap();
        assert_eq!(request["method"], "elicitation/create");
        let schema = &request["params"]["requestedSchema"];
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["confirm"]["type"], "boolean");
        assert_eq!(schema["required"], serde_json::json!(["confirm"]));
        assert!(
            request["params"]["message"]
                .as_str()
                .unwrap()
                .contains("deploy_template")
        );
    }

    #[test]
    fn an_empty_elicitation_capability_means_forms() {
        let caps = |v: serde_json::Value| serde_json::from_value::<ClientCapabilities>(v).unwrap();
        assert!(elicits_forms(&caps(serde_json::json!({"elicitation": {}}))));
        assert!(elicits_forms(&caps(serde_json::json!({"elicitation": {"form": {}}}))));
        assert!(!elicits_forms(&caps(serde_json::json!({"elicitation": {"url": {}}}))));
        assert!(!elicits_forms(&caps(serde_json::json!({}))));
    }
}
