"""What every layer shares: settings, configuration, database, errors, tokens, embeddings, PII."""
