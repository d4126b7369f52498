use rmcp_guard::require_permission;

const RESOURCE: &str = "github";

#[require_permission(resource = RESOURCE, action = "read")]
async fn list() -> Result<(), rmcp::ErrorData> {
    Ok(())
}

fn main() {}
