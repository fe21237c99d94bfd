"""A gradlab plugin, installed beside it: the delayed-echo task and a weight-spectrum measure."""
