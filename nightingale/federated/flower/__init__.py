"""The Flower glue: the ServerApp (coordinator), the ClientApp (a site), the wire recorder, the
local launcher's app folder. The federation's logic lives one level up, free of Flower."""
