# rmcp-guard default policy.
#
# Authenticated callers may list tools, resources and prompts; calling a
# tool, reading a resource or getting a prompt requires the configured tool
# scope (data.mcp.config.tool_scope). Fine-grained checks from
# #[require_permission] are denied: write a policy that grants them.
package mcp.authz

import rego.v1

list_actions := {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}

use_actions := {"tools/call", "resources/read", "prompts/get"}

default allow := false

allow if input.action in list_actions

allow if {
	input.action in use_actions
	scope_granted
}

scope_granted if data.mcp.config.tool_scope in input.scopes

reasons contains "missing_scope" if {
	input.action in use_actions
	not scope_granted
}

reasons contains "no_rule_for_action" if {
	not input.action in list_actions
	not input.action in use_actions
}

required_scopes contains data.mcp.config.tool_scope if {
	input.action in use_actions
	not scope_granted
}
