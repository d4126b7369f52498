use rmcp_guard::require_permission;

#[require_permission(resource = "github")]
async fn list() -> Result<(), rmcp::ErrorData> {
    Ok(())
}

fn main() {}
