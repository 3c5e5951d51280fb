//! CTranslate2 to ggml converter (placeholder)
