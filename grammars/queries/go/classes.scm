; Struct and interface type declarations.
(type_declaration
  (type_spec
    name: (type_identifier) @class.name
    type: [(struct_type) (interface_type)] @class.body)) @class
