// upgrade_v1_2_0/src/lib.rs
use wasm_bindgen::prelude::*;
use serde_json::{Value, json};

#[wasm_bindgen]
pub fn upgrade(network_state_json: &str) -> String {
    // Parse network state
    let mut state: Value = serde_json::from_str(network_state_json)
        .expect("Invalid JSON");
    
    // Apply upgrade logic
    // Example: Add new field to all nodes
    if let Some(nodes) = state["global"]["nodes"].as_object_mut() {
        for (node_id, node_data) in nodes.iter_mut() {
            if let Some(obj) = node_data.as_object_mut() {
                obj.insert("new_feature_enabled".to_string(), json!(true));
            }
        }
    }
    
    // Update version
    state["global"]["version"] = json!("1.2.0");
    
    // Return modified state
    serde_json::to_string(&state).unwrap()
}

#[wasm_bindgen]
pub fn get_upgrade_info() -> String {
    json!({
        "version": "1.2.0",
        "description": "Add new_feature_enabled flag",
        "breaking": false
    }).to_string()
}
