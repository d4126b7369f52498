# rmcp-guard example RBAC policy, the same as rbac.rego written in Rego v0
# (as OPA policies before 1.0 are). Decisions are identical; a test pins it.
package mcp.authz

list_actions := {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}

default allow = false

allow {
	list_actions[input.action]
}

allow {
	scope_granted
	not list_actions[input.action]
	granted("*", "*")
}

allow {
	input.action == "tools/call"
	scope_granted
	data.mcp.rbac.open_tools[_] == input.resource
}

allow {
	input.action == "tools/call"
	scope_granted
	tool := data.mcp.rbac.tools[input.resource]
	granted(tool.resource, tool.action)
}

allow {
	not contains(input.action, "/")
	scope_granted
	granted(input.resource, input.action)
}

allow {
	input.action == "secrets/read"
	scope_granted
	group := input.groups[_]
	grant := data.mcp.rbac.roles[group][_]
	matches(grant.resource, input.resource)
}

scope_granted {
	input.scopes[_] == data.mcp.rbac.tool_scope
}

granted(resource, action) {
	group := input.groups[_]
	grant := data.mcp.rbac.roles[group][_]
	matches(grant.resource, resource)
	matches(grant.actions[_], action)
}

matches(pattern, value) {
	pattern == "*"
}

matches(pattern, value) {
	pattern == value
}

known_tool {
	data.mcp.rbac.open_tools[_] == input.resource
}

known_tool {
	data.mcp.rbac.tools[input.resource]
}

reasons["missing_scope"] {
	not list_actions[input.action]
	not scope_granted
}

reasons["unknown_tool"] {
	input.action == "tools/call"
	not known_tool
}

reasons["no_role_grants_access"] {
	not list_actions[input.action]
	scope_granted
	not allow
}

required_scopes[scope] {
	not list_actions[input.action]
	not scope_granted
	scope := data.mcp.rbac.tool_scope
}
