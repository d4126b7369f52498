// A guarded tool next to an open one, as rmcp's #[tool_router] sees them.
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{ErrorData, schemars, tool, tool_router};
use rmcp_guard::require_permission;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct DeployArgs {
    template_id: String,
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Deploy a template")]
    #[require_permission(resource = "catalyst-center", action = "write")]
    async fn deploy_template(&self, Parameters(args): Parameters<DeployArgs>) -> Result<String, ErrorData> {
        Ok(args.template_id)
    }

    /// Attribute order does not matter.
    #[require_permission(resource = "github", action = "read")]
    #[tool(description = "List repositories")]
    pub async fn list_repositories(&self) -> Result<String, ErrorData> {
        Ok(String::new())
    }

    #[tool(description = "Echo")]
    async fn echo(&self) -> String {
        String::new()
    }
}

fn main() {
    let tools = Tools { tool_router: Tools::tool_router() };
    let names: Vec<_> = tools.tool_router.list_all().into_iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}
