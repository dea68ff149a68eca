"""From a slide to patches: tissue detection, the patch grid at the model's µm/px, blocks of cells,
cutting."""
