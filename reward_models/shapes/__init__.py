"""The shapes world: a procedural GenEval for 32x32 images of coloured circles, squares and
triangles. `world` names its classes and colours, `render` draws scenes that satisfy a prompt,
`detector` finds objects in an image (the shapes stand-in for GenEval's Mask2Former), `prompts`
writes GenEval-format prompt sets. Pure numpy/scipy/PIL: no model, no torch."""
