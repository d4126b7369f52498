use rmcp_guard::require_permission;

#[require_permission(resource = "github", action = "read")]
async fn list() -> String {
    String::new()
}

fn main() {}
