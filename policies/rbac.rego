# rmcp-guard example RBAC policy (Rego v1), for a groups claim.
#
# Roles, tools and the tool scope live in the data document
# (rbac_data.json, under data.mcp.rbac): a role grants actions on a
# resource ("*" is every resource or every action); a tool maps to one
# (resource, action). Listing is open to every authenticated caller and the
# lists are filtered per item with the tools/call decision.
#
#   input.action "tools/call"      input.resource is a tool name
#   input.action "read"/"write"... (no "/") a #[require_permission] check on
#                                  input.resource
package mcp.authz

import rego.v1

list_actions := {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}

default allow := false

allow if input.action in list_actions

# Any tool, resource, prompt or permission, for a role with a wildcard grant.
allow if {
	scope_granted
	not input.action in list_actions
	granted("*", "*")
}

# Tools open to every caller with the tool scope.
allow if {
	input.action == "tools/call"
	scope_granted
	input.resource in data.mcp.rbac.open_tools
}

# Mapped tools: a role must grant the tool's (resource, action).
allow if {
	input.action == "tools/call"
	scope_granted
	tool := data.mcp.rbac.tools[input.resource]
	granted(tool.resource, tool.action)
}

# #[require_permission(resource = ..., action = ...)] checks.
allow if {
	not contains(input.action, "/")
	scope_granted
	granted(input.resource, input.action)
}

# Secret reads (rmcp_guard::secrets, action "secrets/read", resource = the
# service): a role with any grant on that service may read the caller's own
# credential for it (the path template already confines it to the caller's
# tenant).
allow if {
	input.action == "secrets/read"
	scope_granted
	some group in input.groups
	some grant in data.mcp.rbac.roles[group]
	grant.resource in {input.resource, "*"}
}

scope_granted if data.mcp.rbac.tool_scope in input.scopes

granted(resource, action) if {
	some group in input.groups
	some grant in data.mcp.rbac.roles[group]
	grant.resource in {resource, "*"}
	some granted_action in grant.actions
	granted_action in {action, "*"}
}

known_tool if input.resource in data.mcp.rbac.open_tools

known_tool if data.mcp.rbac.tools[input.resource]

reasons contains "missing_scope" if {
	not input.action in list_actions
	not scope_granted
}

reasons contains "unknown_tool" if {
	input.action == "tools/call"
	not known_tool
}

reasons contains "no_role_grants_access" if {
	not input.action in list_actions
	scope_granted
	not allow
}

required_scopes contains data.mcp.rbac.tool_scope if {
	not input.action in list_actions
	not scope_granted
}
