use rmcp_guard::require_permission;

#[require_permission(resource = "github", action = "read", scope = "admin")]
async fn list() -> Result<(), rmcp::ErrorData> {
    Ok(())
}

fn main() {}
