; Classes, abstract classes, interfaces and enums.
(class_declaration
  name: (type_identifier) @class.name
  body: (class_body) @class.body) @class
(abstract_class_declaration
  name: (type_identifier) @class.name
  body: (class_body) @class.body) @class
(class
  body: (class_body) @class.body) @class
(interface_declaration
  name: (type_identifier) @class.name
  body: (interface_body) @class.body) @class
(enum_declaration
  name: (identifier) @class.name
  body: (enum_body) @class.body) @class
