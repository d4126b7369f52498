use rmcp_guard::require_permission;

#[require_permission(resource = "github", action = "read")]
fn list(_x: u8) -> Result<(), rmcp::ErrorData> {
    Ok(())
}

fn main() {}
