"""Model classes that extend the generic engine. Imported only when such a model is loaded."""
