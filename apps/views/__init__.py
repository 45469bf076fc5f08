"""Dashboard views: each module has pure compute functions (tested against the store) and a `render(ctx)`."""
